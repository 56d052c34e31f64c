"""When a bus that failed to open may be tried again: one rule for every transport."""

from __future__ import annotations

import time

from edgeagent.backoff import Backoff


class ReopenGate:
    """Capped exponential backoff between attempts to open (or dial) a bus.

    Local hardware is not a fleet-wide herd, so the delay is never below the minimum
    (bounded jitter). Callers ask ``wait_left()`` before an attempt and report its
    outcome; ``last_error`` says why the previous attempt failed.
    """

    def __init__(self, minimum_s: float, maximum_s: float) -> None:
        self._backoff = Backoff(minimum_s, maximum_s, full_jitter=False)
        self._next_attempt = 0.0
        self.last_error = ""

    @property
    def failures(self) -> int:
        """Failed attempts since the last success; each one lets the delay grow."""
        return self._backoff.failures

    def wait_left(self) -> float:
        """Seconds until the next attempt is due; 0 when it may be made now."""
        return max(0.0, self._next_attempt - time.monotonic())

    def failed(self, error: str) -> None:
        self.last_error = error
        self._next_attempt = time.monotonic() + self._backoff.next_delay()

    def succeeded(self) -> None:
        self._backoff.reset()
