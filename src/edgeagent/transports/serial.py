"""A serial port as a byte pipe for line protocols (Vaisala PWD, TI mmWave radar).

pyserial opens and configures the port (exclusively, so a second program cannot
silently share the line); the event loop's reader callback collects what arrives into
a bounded buffer, and writes go straight to the non-blocking file descriptor. The
module knows no frames: protocols/ cut frames out of what ``read`` returns.

Errors end here: a port that cannot be opened, refuses its settings, or vanishes (a USB
adapter unplugged) becomes ``DeviceUnreachable`` with the reason; waiting in vain
becomes ``DeviceTimeout``. Reopening after a failure is paced by capped, jittered
backoff, so a missing adapter is not hammered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios

import serial

from edgeagent.errors import DeviceTimeout, DeviceUnreachable
from edgeagent.transports._gate import ReopenGate

DEFAULT_MAX_BUFFER_BYTES = 256 * 1024
"""A reader that falls behind keeps at most this much; older bytes are dropped (and counted)."""


class SerialLine:
    """One serial port: open on demand, read what arrived, write frames, reopen after failures."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: int = 1,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
    ) -> None:
        self.port = port
        self.settings = {"baudrate": baudrate, "bytesize": bytesize, "parity": parity, "stopbits": stopbits}
        self._serial: serial.Serial | None = None
        self._fd: int | None = None
        self._buffer = bytearray()
        self._max_buffer_bytes = max_buffer_bytes
        self._arrived = asyncio.Event()
        self._error: str | None = None
        self._gate = ReopenGate(reconnect_min_s, reconnect_max_s)
        self.overflow_bytes = 0

    @property
    def label(self) -> str:
        return self.port

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        """Open the port if it is not open; raise DeviceUnreachable (and back off) if it cannot be."""
        if self._serial is not None:
            return
        if wait := self._gate.wait_left():
            raise DeviceUnreachable(f"cannot open {self.port}: {self._gate.last_error}; next try in {wait:.1f} s")
        try:
            port = serial.Serial(self.port, exclusive=True, timeout=0, write_timeout=0, **self.settings)
        except (serial.SerialException, ValueError, termios.error) as exc:
            error = describe_serial_error(exc)
            self._gate.failed(error)
            raise DeviceUnreachable(f"cannot open {self.port}: {error}") from exc
        self._gate.succeeded()
        self._serial = port
        self._fd = port.fileno()
        self._error = None
        self._buffer.clear()
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(f"{self.port} read failed: {exc.strerror or exc}")
            return
        if not data:  # readable but empty: the device is gone (USB adapter unplugged)
            self._fail(f"{self.port} disappeared (end of file)")
            return
        self._buffer += data
        excess = len(self._buffer) - self._max_buffer_bytes
        if excess > 0:
            del self._buffer[:excess]
            self.overflow_bytes += excess
        self._arrived.set()

    def _fail(self, reason: str) -> None:
        self._error = reason
        self._close_port()
        self._arrived.set()

    def _check(self) -> None:
        if self._error is not None:
            reason, self._error = self._error, None
            raise DeviceUnreachable(reason)

    async def read(self, timeout_s: float) -> bytes:
        """Everything received so far, waiting up to ``timeout_s`` for the first byte."""
        self._check()
        self.open()
        if not self._buffer:
            self._arrived.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._arrived.wait()
            except TimeoutError as exc:
                raise DeviceTimeout(f"nothing received on {self.port} within {timeout_s:g} s") from exc
            self._check()
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def discard_input(self) -> int:
        """Drop what arrived unasked (a late answer, line noise); return how many bytes."""
        dropped = len(self._buffer)
        self._buffer.clear()
        return dropped

    def write(self, data: bytes) -> None:
        """Send bytes now; frames here are small, so a full kernel buffer is an error, not a wait."""
        self._check()
        self.open()
        assert self._fd is not None
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            self._close_port()
            raise DeviceUnreachable(f"{self.port} write failed: {exc.strerror or exc}") from exc
        if written != len(data):
            raise DeviceTimeout(f"{self.port} accepted {written} of {len(data)} bytes (line stalled)")

    def _close_port(self) -> None:
        if self._serial is None:
            return
        if self._fd is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._fd)
        with contextlib.suppress(OSError, serial.SerialException):
            self._serial.close()
        self._serial = None
        self._fd = None

    async def close(self) -> None:
        self._close_port()
        self._buffer.clear()


def describe_serial_error(exc: BaseException) -> str:
    """A serial error as a technician wants to read it."""
    text = str(exc)
    if isinstance(exc, termios.error) and exc.args:
        text = f"[Errno {exc.args[0]}] {exc.args[-1]}"
    if "Invalid argument" in text:
        return f"{text} (the port refuses these settings; a pty accepts only 8N1)"
    if "Could not exclusively lock" in text or "Resource temporarily unavailable" in text:
        return f"{text} (another program holds the port)"
    return text or type(exc).__name__
