"""The project's own error types.

Library errors (pymodbus, pyserial, bleak, aiohttp) are translated into these at the
transport or uplink edge, with ``raise ... from exc``; nothing above that edge catches
a library's exception.

    EdgeAgentError
    ├── ConfigError              a config or profile file is invalid (carries every problem)
    ├── DecodeError              bytes from a device could not be decoded (pure protocol code)
    ├── InvalidWrite             a write was refused before it reached the bus (unknown point, range)
    ├── DeviceError              a device transaction failed
    │   ├── DeviceTimeout        no answer in time
    │   ├── DeviceUnreachable    the bus or socket could not be opened
    │   └── DeviceException      the device answered with an exception (e.g. Modbus 02)
    ├── StoreError               the local buffer could not be read or written
    │   └── StoreFull            the disk is full; the reading was counted, not stored
    └── UplinkError              an upstream send failed; the batch stays in the buffer
        ├── UplinkRetryLater     a transient failure (5xx, 408, 429, timeout, refused)
        └── UplinkRejected       the receiver refused the batch (4xx other than 408/429)
"""

from __future__ import annotations

from dataclasses import dataclass


class EdgeAgentError(Exception):
    """Base of every error edgeagent raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in a config file: where it is and what is wrong."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.file, self.path) if part)
        return f"{where}: {self.message}" if where else self.message


class ConfigError(EdgeAgentError):
    """A config or profile is invalid; ``problems`` lists every one found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class DecodeError(EdgeAgentError):
    """A frame or register block could not be decoded into values."""


class InvalidWrite(EdgeAgentError):
    """A requested write names no writable point or a value the point cannot take."""


class DeviceError(EdgeAgentError):
    """A transaction with a field device failed; ``reason`` is shown on the status page."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class DeviceTimeout(DeviceError):
    """The device did not answer within its timeout."""


class DeviceUnreachable(DeviceError):
    """The bus, port or socket that reaches the device could not be opened."""


class DeviceException(DeviceError):
    """The device answered, but with an error (a Modbus exception response, say)."""


class StoreError(EdgeAgentError):
    """The local buffer could not be read or written."""


class StoreFull(StoreError):
    """The disk holding the buffer is full."""


class StoreCorrupt(StoreError):
    """The buffer's file went bad under the running agent: it is moved aside and replaced."""


class UplinkError(EdgeAgentError):
    """An upstream send failed; the batch stays in the buffer and is sent again."""


class UplinkRetryLater(UplinkError):
    """A transient failure; ``retry_after_s`` is the receiver's hint, if it gave one.

    ``link_down`` says the link itself failed (refused, unreachable, disconnected), as
    opposed to a receiver that answered but is busy: only then is waiting for the link to
    return, rather than for a backoff timer, the right thing to do.
    """

    def __init__(self, reason: str, retry_after_s: float | None = None, *, link_down: bool = False) -> None:
        self.retry_after_s = retry_after_s
        self.link_down = link_down
        super().__init__(reason)


class UplinkRejected(UplinkError):
    """The receiver refused the batch (a 4xx); retried slowly, never dropped."""

    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {body}")
