"""Readings of one class with their numbers, as memory holds them and a batch carries them.

Five thousand readings a second pass through memory on their way upstream; building a
``StoredReading`` for each (a frozen dataclass, ten fields) cost more than anything else
the store did. So memory keeps the readings as they came, beside their numbers, and a
``StoredReading`` is only made when someone looks at one (a test, a commit); the SenML
encoder reads the pairs directly (``rows``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import overload

from edgeagent.model import Priority, Reading, StoredReading
from edgeagent.store.types import Batch, DestinationFilter


class Numbered(Sequence[StoredReading]):
    """Readings of one class in sequence order; ``boot``: this boot's id, for boot-relative ones."""

    __slots__ = ("boot", "prio", "readings", "seqs")

    def __init__(
        self, prio: Priority, boot: str, seqs: list[int] | None = None, readings: list[Reading] | None = None
    ) -> None:
        self.prio = prio
        self.boot = boot
        self.seqs: list[int] = seqs if seqs is not None else []
        self.readings: list[Reading] = readings if readings is not None else []

    def __len__(self) -> int:
        return len(self.seqs)

    @overload
    def __getitem__(self, i: int) -> StoredReading: ...
    @overload
    def __getitem__(self, i: slice) -> Numbered: ...
    def __getitem__(self, i: int | slice) -> StoredReading | Numbered:
        if isinstance(i, slice):
            return Numbered(self.prio, self.boot, self.seqs[i], self.readings[i])
        return self.stored(self.seqs[i], self.readings[i])

    def __iter__(self) -> Iterator[StoredReading]:
        for seq, r in zip(self.seqs, self.readings, strict=True):
            yield self.stored(seq, r)

    def __repr__(self) -> str:
        return f"Numbered({self.prio.name.lower()}, {len(self)} readings)"

    def stored(self, seq: int, r: Reading) -> StoredReading:
        boot = self.boot if r.boot_relative else None
        return StoredReading(seq, r.device, r.point, r.ts, r.value, r.unit, r.quality, self.prio, boot, r.reason)

    def rows(self) -> Iterator[tuple[int, Reading, str | None]]:
        """(seq, reading, boot id of a boot-relative time) for each, without building anything."""
        boot = self.boot
        for seq, r in zip(self.seqs, self.readings, strict=True):
            yield seq, r, (boot if r.boot_relative else None)

    def append(self, seq: int, reading: Reading) -> None:
        self.seqs.append(seq)
        self.readings.append(reading)

    def after(self, seq: int) -> int:
        """Index of the first reading numbered above ``seq``."""
        return bisect.bisect_right(self.seqs, seq)

    def keep(self, start: int, gone: set[int]) -> None:
        """Forget the first ``start`` readings and those numbered in ``gone``."""
        seqs, readings = self.seqs[start:], self.readings[start:]
        if gone:
            pairs = [(s, r) for s, r in zip(seqs, readings, strict=True) if s not in gone]
            seqs, readings = [s for s, _ in pairs], [r for _, r in pairs]
        self.seqs, self.readings = seqs, readings


def memory_batch(destination: str, part: Numbered, filt: DestinationFilter, buffer_id: str) -> Batch:
    """A batch from memory: wall-clock times or boot-relative ones, never both (a SenML
    pack's base time cannot speak for a record that has no time); the device filter
    applied, the cursor moving past what it left out."""
    readings = part.readings
    booted = readings[0].boot_relative
    for i, r in enumerate(readings):
        if r.boot_relative != booted:
            part = part[:i]
            break
    scanned_to = part.seqs[-1]
    if filt.devices is not None:
        devices = filt.devices
        kept = [(s, r) for s, r in zip(part.seqs, part.readings, strict=True) if r.device in devices]
        part = Numbered(part.prio, part.boot, [s for s, _ in kept], [r for _, r in kept])
    return Batch(destination, part.prio, part, scanned_to=scanned_to, buffer_id=buffer_id)
