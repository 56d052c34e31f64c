"""A pty pair for serial simulators: the agent opens ``port``, the simulator owns the master end."""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import Callable, Coroutine
from typing import Any, Self


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


class BackgroundSimulator:
    """A simulator with background tasks, used as an async context manager."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` until it ends or the simulator stops."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> object:
        raise NotImplementedError

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class PtySimulator(BackgroundSimulator):
    """A simulated serial device: the agent opens ``port``; bytes it writes reach ``_on_data``."""

    def __init__(self) -> None:
        super().__init__()
        self.port = ""
        self._pty: PtyEnd | None = None

    def _on_data(self, data: bytes) -> None:
        """Bytes from the client; a talk-only device ignores them."""

    def _background(self) -> Coroutine[Any, Any, None] | None:
        """The device's own activity (serving, streaming), if it has any."""
        return None

    async def start(self) -> str:
        """Open the pty pair (and start the device's activity); return the port path."""
        self._pty = PtyEnd(self._on_data)
        self.port = self._pty.port
        activity = self._background()
        if activity is not None:
            self._spawn(activity, name=f"sim-{type(self).__name__}:{self.port}")
        return self.port

    async def stop(self) -> None:
        await super().stop()
        if self._pty is not None:
            self._pty.close()
            self._pty = None
