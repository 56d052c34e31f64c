"""Capped exponential backoff, with full jitter by default.

Full jitter (a uniform draw between zero and the capped exponential, the first retry
included) spreads the retries of thousands of gateways after a broker or ingest
restart, where any fixed part of the schedule would bring them all back in the same
instant. Device schedules use the bounded form instead (never sooner than the
minimum), because polling a sensor faster than its interval helps nobody.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays for successive failures, each ``<= min(maximum_s, minimum_s * 2**n)``."""

    def __init__(
        self,
        minimum_s: float,
        maximum_s: float,
        *,
        full_jitter: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if minimum_s <= 0 or maximum_s < minimum_s:
            raise ValueError("need 0 < minimum_s <= maximum_s")
        self.minimum_s = minimum_s
        self.maximum_s = maximum_s
        self.full_jitter = full_jitter
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        ceiling = min(self.maximum_s, self.minimum_s * 2 ** min(self.failures, 32))
        self.failures += 1
        return self._rng.uniform(0.0 if self.full_jitter else self.minimum_s, ceiling)

    def reset(self) -> None:
        """Success: the next failure starts again from the minimum."""
        self.failures = 0
