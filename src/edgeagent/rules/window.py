"""The recent good readings of one input, for ``avg``, ``min``, ``max``, ``rate`` and ``count``.

A window keeps what its longest use needs (readings newer than that many seconds) and
never more than ``MAX_SAMPLES`` of them, so memory is bounded by the config, not by
uptime or by how fast a sensor talks. Only readings of good quality go in.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

MAX_SAMPLES = 4096


class SampleWindow:
    __slots__ = ("keep_s", "samples")

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self.samples: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)

    def add(self, ts: float, value: float) -> None:
        samples = self.samples
        if samples and ts < samples[-1][0]:
            return  # out of order (a clock step back): a window only moves forward
        samples.append((ts, value))
        cutoff = ts - self.keep_s
        while samples[0][0] <= cutoff:
            samples.popleft()

    def _recent(self, now: float, seconds: float) -> list[tuple[float, float]]:
        cutoff = now - seconds
        out: list[tuple[float, float]] = []
        for sample in reversed(self.samples):
            if sample[0] <= cutoff:
                break
            if sample[0] <= now:
                out.append(sample)
        out.reverse()
        return out

    def avg(self, now: float, seconds: float) -> float | None:
        recent = self._recent(now, seconds)
        return sum(v for _, v in recent) / len(recent) if recent else None

    def min(self, now: float, seconds: float) -> float | None:
        recent = self._recent(now, seconds)
        return min(v for _, v in recent) if recent else None

    def max(self, now: float, seconds: float) -> float | None:
        recent = self._recent(now, seconds)
        return max(v for _, v in recent) if recent else None

    def rate(self, now: float, seconds: float) -> float | None:
        """Change per second between the oldest and newest reading in the window."""
        recent = self._recent(now, seconds)
        if len(recent) < 2 or recent[-1][0] == recent[0][0]:
            return None
        return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])

    def count(self, now: float, seconds: float) -> float:
        return float(len(self._recent(now, seconds)))

    def dump(self) -> list[list[float]]:
        return [[t, v] for t, v in self.samples]

    def load(self, pairs: object, now: float) -> None:
        """Restore saved samples (those still inside the window); ignore anything malformed."""
        if not isinstance(pairs, list):
            return
        cutoff = now - self.keep_s
        for pair in islice(pairs, MAX_SAMPLES):
            if (
                isinstance(pair, list)
                and len(pair) == 2
                and all(isinstance(x, int | float) and not isinstance(x, bool) for x in pair)
                and cutoff < pair[0] <= now
            ):
                self.add(float(pair[0]), float(pair[1]))
