"""A byte-rate cap per destination, so a catch-up after an outage cannot eat a cellular plan."""

from __future__ import annotations

import time


class TokenBucket:
    """Bytes per second with a burst allowance; a batch larger than the burst is let
    through once the bucket is full and then paid back, so no batch is ever stuck."""

    def __init__(self, rate_bytes_per_s: float, burst_bytes: float | None = None) -> None:
        self.rate = rate_bytes_per_s
        self.burst = burst_bytes if burst_bytes is not None else rate_bytes_per_s
        self._tokens = self.burst
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay_for(self, size: int) -> float:
        """Seconds to wait before ``size`` bytes may go."""
        self._refill()
        need = min(size, self.burst)
        return 0.0 if self._tokens >= need else (need - self._tokens) / self.rate

    def spend(self, size: int) -> None:
        self._refill()
        self._tokens -= size
