"""The recent good readings of one input, for ``avg``, ``min``, ``max``, ``rate`` and ``count``.

A window keeps what its longest use needs (readings newer than that many seconds) and
never more than ``MAX_SAMPLES`` of them, so memory is bounded by the config, not by
uptime or by how fast a sensor talks. Only readings of good quality go in. Samples are
kept as raw doubles (16 bytes a reading, not the ~110 of a tuple of two floats), in two
arrays read from ``_start``; the dead front is cut off once it is half of the array.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from itertools import islice

MAX_SAMPLES = 4096
_COMPACT_AT = 256


class SampleWindow:
    __slots__ = ("_start", "_ts", "_vs", "keep_s")

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._ts = array("d")
        self._vs = array("d")
        self._start = 0

    def __len__(self) -> int:
        return len(self._ts) - self._start

    @property
    def samples(self) -> list[tuple[float, float]]:
        return list(zip(self._ts[self._start :], self._vs[self._start :], strict=True))

    def add(self, ts: float, value: float) -> None:
        tss = self._ts
        if len(tss) > self._start and ts < tss[-1]:
            return  # out of order (a clock step back): a window only moves forward
        tss.append(ts)
        self._vs.append(value)
        cutoff = ts - self.keep_s
        start = self._start
        end = len(tss)
        while tss[start] <= cutoff:
            start += 1
        if end - start > MAX_SAMPLES:
            start = end - MAX_SAMPLES
        if start >= _COMPACT_AT and start * 2 >= end:
            del tss[:start]
            del self._vs[:start]
            start = 0
        self._start = start

    def _recent(self, now: float, seconds: float) -> tuple[int, int]:
        """The index range [first, last) of samples in (now - seconds, now]: two binary searches."""
        tss = self._ts
        last = bisect_right(tss, now, self._start)
        return bisect_right(tss, now - seconds, self._start, last), last

    def avg(self, now: float, seconds: float) -> float | None:
        first, last = self._recent(now, seconds)
        return sum(self._vs[first:last]) / (last - first) if last > first else None

    def min(self, now: float, seconds: float) -> float | None:
        first, last = self._recent(now, seconds)
        return min(self._vs[first:last]) if last > first else None

    def max(self, now: float, seconds: float) -> float | None:
        first, last = self._recent(now, seconds)
        return max(self._vs[first:last]) if last > first else None

    def rate(self, now: float, seconds: float) -> float | None:
        """Change per second between the oldest and newest reading in the window."""
        first, last = self._recent(now, seconds)
        if last - first < 2 or self._ts[last - 1] == self._ts[first]:
            return None
        return (self._vs[last - 1] - self._vs[first]) / (self._ts[last - 1] - self._ts[first])

    def count(self, now: float, seconds: float) -> float:
        first, last = self._recent(now, seconds)
        return float(last - first)

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
