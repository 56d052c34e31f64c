"""Heartbeats of the critical tasks, so the systemd watchdog is told the truth.

Each critical task (a bus poller, the store's commit loop, a sync worker) calls its
beat after every round. The watchdog pings only while every registered task has
beaten within its allowance; a task that hangs stops the pings and systemd restarts
the service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Entry:
    allowance_s: float
    last_beat: float


class Heartbeats:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def register(self, name: str, allowance_s: float) -> Callable[[], None]:
        """Register a critical task; return the function it calls to check in."""
        entry = _Entry(allowance_s, time.monotonic())
        self._entries[name] = entry

        def beat() -> None:
            entry.last_beat = time.monotonic()

        return beat

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def stale(self) -> list[str]:
        """Names of tasks that have not checked in within their allowance."""
        now = time.monotonic()
        return [n for n, e in self._entries.items() if now - e.last_beat > e.allowance_s]
