"""A pty pair for serial simulators: the agent opens ``port``, the simulator owns the master end."""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import Callable


class PtyEnd:
    """The master end of a fresh pty pair; bytes the client writes arrive in ``on_data``."""

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line editing, before any client opens it
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self.slave)
        self.written = 0
        asyncio.get_running_loop().add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EAGAIN, or EIO while no client has the port open
            return
        if data:
            self._on_data(data)

    def write(self, data: bytes) -> bool:
        """Send bytes to the client; False when nobody listens or the pty is full."""
        try:
            written = os.write(self.master, data)
        except OSError:
            return False
        self.written += written
        return written == len(data)

    def close(self) -> None:
        if self.master < 0:
            return
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
        os.close(self.slave)
        self.master = self.slave = -1
