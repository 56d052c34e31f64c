"""The last hour (at least) of every numeric point, for the device page's chart.

Each (device, point) series is a ring of ``SLOTS`` samples held in two ``array('d')``
(16 bytes a sample): 1,024 slots cost 16 KiB a series, so 50 devices of 5 points hold
at most 4 MiB, whatever the uptime. A sample is kept at most every ``SPACING_S``
seconds (a faster poll overwrites the newest slot instead), so the ring always spans
``SLOTS * SPACING_S`` = 1 h 8 min, however often a device is polled.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from edgeagent.hub import ReadingsBatch

SLOTS = 1024
SPACING_S = 4.0
MAX_SERIES = 2000  # beyond this many series (a misconfigured site), new ones are not kept
BYTES_PER_SERIES = SLOTS * 16


class Series:
    __slots__ = ("_next", "_size", "ts", "values")

    def __init__(self) -> None:
        self.ts = array("d", bytes(8 * SLOTS))
        self.values = array("d", bytes(8 * SLOTS))
        self._next = 0
        self._size = 0

    def add(self, ts: float, value: float) -> None:
        newest = (self._next - 1) % SLOTS
        if self._size and ts - self.ts[newest] < SPACING_S and ts >= self.ts[newest]:
            self.values[newest] = value  # too soon for a new slot: the newest moves on
            if self._size == 1 or ts - self.ts[(newest - 1) % SLOTS] >= SPACING_S:
                self.ts[newest] = ts
            return
        self.ts[self._next] = ts
        self.values[self._next] = value
        self._next = (self._next + 1) % SLOTS
        self._size = min(SLOTS, self._size + 1)

    def since(self, start: float) -> tuple[list[float], list[float]]:
        """Samples from ``start`` on, oldest first."""
        first = (self._next - self._size) % SLOTS
        order = [(first + i) % SLOTS for i in range(self._size)]
        picked = [i for i in order if self.ts[i] >= start]
        return [self.ts[i] for i in picked], [self.values[i] for i in picked]


class History:
    """Every numeric reading published on the hub, as bounded series (a hub listener)."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], Series] = {}

    def listen(self, batches: Sequence[ReadingsBatch]) -> None:
        for batch in batches:
            for r in batch.readings:
                if isinstance(r.value, int | float) and not r.boot_relative:
                    key = (r.device, r.point)
                    series = self._series.get(key)
                    if series is None:
                        if len(self._series) >= MAX_SERIES:
                            continue
                        series = self._series[key] = Series()
                    series.add(r.ts, float(r.value))

    def of_device(self, device: str, since: float) -> dict[str, dict[str, list[float]]]:
        out = {}
        for (dev, point), series in self._series.items():
            if dev == device:
                ts, values = series.since(since)
                out[point] = {"ts": ts, "values": values}
        return out

    @property
    def bytes_held(self) -> int:
        return len(self._series) * BYTES_PER_SERIES
