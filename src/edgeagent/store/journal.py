"""Numbering, on the event loop: a reading gets its number as it is written to the tail.

Readings wait here, unnumbered, for the end of the event loop's current step (a poll's
readings arrive together); then, in one step, they are numbered, written to the tail
(``edgeagent.store.tail``) as one record, and become *sendable*: a sync worker can take
them from memory at once, before any commit. They stay in memory until every
destination has them (then they are simply forgotten: nothing to write) or until they
are a commit interval old (then they go into a block). Numbers are only handed out
within the reservation, which was written through to the card first.

When the tail cannot be written (a full disk), readings wait unnumbered and are
numbered by the commit that writes them, as before the tail existed: memory stays
bounded (``max_pending_readings``) and what is shed is counted.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import deque
from collections.abc import Mapping, Sequence
from operator import attrgetter

from edgeagent.clock import boot_id
from edgeagent.model import Priority, Reading, StoredReading
from edgeagent.store import blocks
from edgeagent.store.core import _Core, make_batch
from edgeagent.store.schema import BLOCKS
from edgeagent.store.tail import TailWriter, make_payload, tail_path
from edgeagent.store.types import Batch, Budget, DestinationFilter

# Budget bytes a reading is taken to cost before its class has a block to measure.
DEFAULT_READING_BYTES = 4
_SEQ = attrgetter("seq")


@dataclasses.dataclass(slots=True)
class Numbered:
    """Readings just numbered, the waiting readings they came from, and what was refused."""

    readings: list[StoredReading]
    originals: list[Reading]
    rejected: dict[Priority, int]
    boot: tuple[int, str] | None


class Journal:
    """The readings of one buffer that are not in its file: unnumbered, or numbered and in the tail."""

    def __init__(self, core: _Core, unnumbered: deque[Reading] | None = None) -> None:
        self.core = core
        self.tail = TailWriter(tail_path(core.path))
        self.counter = core.last_seq  # the last number handed out
        self.unnumbered: deque[Reading] = unnumbered if unnumbered is not None else deque()
        self.mem: dict[Priority, list[StoredReading]] = {p: [] for p in BLOCKS}
        self.committed_top = dict(core.top)  # the blocks' highest seq per class, as this loop knows it
        self.new_series: list[tuple[int, str, str, str]] = []  # not in the file yet
        self.new_boots: list[tuple[int, str]] = []
        self.drops: dict[tuple[Priority, str], int] = {}  # counted, not yet in the file
        self._series_in_tail = core.series_saved
        # reject_new classes found full, with their bytes then: full until the file gives room back.
        self._full_at: dict[Priority, int] = {}
        self._acks_in_tail: dict[tuple[str, Priority], int] = {}
        self._boot = boot_id()

    # -- the tail ------------------------------------------------------------------

    def start_tail(self) -> bool:
        """A fresh tail holding what only memory holds now: unsaved series, cursors, readings."""
        core = self.core
        header = {"bid": core.buffer_id, "boot": self._boot, "last_seq": self.counter}
        series = [s for s in self.new_series if s[0] > core.series_saved]
        acks = dict(core.cursors)
        segments = [(p, blocks.encode_segment(rs, core.sid_of)) for p, rs in self.mem.items() if rs]
        payload = make_payload(segments, _head(series, acks))
        if not self.tail.start(header, payload):
            return False
        self._series_in_tail = max([core.series_saved, *(s[0] for s in series)])
        self._acks_in_tail = acks
        return True

    def note_acks(self) -> None:
        """Append the cursors moved since the tail last heard, so a crash does not resend much."""
        moved = {k: v for k, v in self.core.cursors.items() if self._acks_in_tail.get(k) != v}
        if moved and self.tail.append(make_payload([], _head([], moved))):
            self._acks_in_tail.update(moved)

    # -- numbering -----------------------------------------------------------------

    def take(self, budgets: Mapping[Priority, Budget], limit: int) -> Numbered | None:
        """Number up to ``limit`` waiting readings, within the reservation (full reject_new
        classes refuse theirs first). Settle with ``keep`` or ``undo``."""
        n = min(len(self.unnumbered), self.core.reserved_upto - self.counter, limit)
        if n <= 0:
            return None
        waiting = [self.unnumbered[i] for i in range(n)]
        kept, rejected = self._reject_over_budget(waiting, budgets)
        readings, boot = self._numbered(kept)
        return Numbered(readings, waiting, rejected, boot)

    def keep(self, numbered: Numbered, *, in_memory: bool) -> None:
        for _ in numbered.originals:
            self.unnumbered.popleft()
        if numbered.boot is not None:
            self._new_boot(*numbered.boot)
        for prio, count in numbered.rejected.items():
            self.drops[(prio, "rejected_full")] = self.drops.get((prio, "rejected_full"), 0) + count
        if in_memory:
            for r in numbered.readings:
                self.mem[r.priority].append(r)
        self.core.last_seq = self.counter

    def undo(self, numbered: Numbered) -> None:
        """The numbers were not used (nothing of them left the store): hand them out again."""
        if numbered.readings:
            assert self.counter == numbered.readings[-1].seq, "numbers undone out of order"
            self.counter = numbered.readings[0].seq - 1

    def journal(self, budgets: Mapping[Priority, Budget], max_memory: int) -> list[StoredReading]:
        """Number what waits and write it to the tail in one record; return what became sendable."""
        if self.tail.broken:
            return []
        numbered = self.take(budgets, max_memory - self.in_memory())
        if numbered is None:
            return []
        series = [s for s in self.new_series if s[0] > self._series_in_tail]
        by_class: dict[Priority, list[StoredReading]] = {}
        for r in numbered.readings:
            by_class.setdefault(r.priority, []).append(r)
        segments = [(p, blocks.encode_segment(rs, self.core.sid_of)) for p, rs in by_class.items()]
        if not self.tail.append(make_payload(segments, _head(series, {}))):
            self.undo(numbered)
            return []
        if series:
            self._series_in_tail = series[-1][0]
        self.keep(numbered, in_memory=True)
        return numbered.readings

    def _numbered(self, readings: list[Reading]) -> tuple[list[StoredReading], tuple[int, str] | None]:
        core = self.core
        series, by_id = core.series, core.series_by_id
        seq = self.counter
        out = []
        boot_first: tuple[int, str] | None = None
        for r in readings:
            key = (r.device, r.point, r.unit)
            if key not in series:
                sid = max(by_id, default=0) + 1
                series[key] = sid
                by_id[sid] = key
                self.new_series.append((sid, *key))
            seq += 1
            boot = None
            if r.boot_relative:
                boot = self._boot
                if boot_first is None:
                    boot_first = (seq, boot)
            out.append(
                StoredReading(seq, r.device, r.point, r.ts, r.value, r.unit, r.quality, r.priority, boot, r.reason)
            )
        self.counter = seq
        return out, boot_first

    def _new_boot(self, first: int, boot: str) -> None:
        core = self.core
        if core._boot_of(first) == boot:
            return
        bisect.insort(core.boots, (first, boot))
        self.new_boots.append((first, boot))
        if core.this_boot_from is None:
            core.this_boot_from = first

    def _reject_over_budget(
        self, readings: list[Reading], budgets: Mapping[Priority, Budget]
    ) -> tuple[list[Reading], dict[Priority, int]]:
        """Refuse the newest readings of full ``reject_new`` classes before they are numbered.

        A class found full stays full until its blocks give room back (acknowledged ones
        deleted), so what is kept is always the oldest: a later, better estimate of a
        reading's cost never lets a newer reading in after an older one was refused.
        """
        rejected: dict[Priority, int] = {}
        core = self.core
        for prio, budget in budgets.items():
            if budget.policy != "reject_new":
                continue
            incoming = sum(1 for r in readings if r.priority == prio)
            if not incoming:
                continue
            full_at = self._full_at.get(prio)
            if full_at is not None and core.bytes[prio] >= full_at:
                rejected[prio] = incoming
                continue
            self._full_at.pop(prio, None)
            per = core.bytes[prio] / core.rows[prio] if core.rows[prio] else DEFAULT_READING_BYTES
            used = core.bytes[prio] + per * len(self.mem[prio])
            room = max(0, int((budget.max_bytes - used) / per))
            if incoming > room:
                rejected[prio] = incoming - room
                self._full_at[prio] = core.bytes[prio]
        if not rejected:
            return readings, rejected
        keep_left = {p: sum(1 for r in readings if r.priority == p) - n for p, n in rejected.items()}
        kept = []
        for r in readings:
            left = keep_left.get(r.priority)
            if left is None:
                kept.append(r)
            elif left > 0:
                kept.append(r)
                keep_left[r.priority] = left - 1
        return kept, rejected

    # -- memory --------------------------------------------------------------------

    def in_memory(self) -> int:
        return sum(len(rs) for rs in self.mem.values())

    def batch(self, destination: str, prio: Priority, cursor: int, limit: int, filt: DestinationFilter) -> Batch | None:
        """The next batch of a class from memory, above ``cursor``."""
        readings = self.mem[prio]
        i = bisect.bisect_right(readings, cursor, key=_SEQ)
        if i >= len(readings):
            return None
        return make_batch(destination, prio, readings[i : i + limit], filt, self.core.buffer_id)

    def first_after(self, prio: Priority, cursor: int) -> StoredReading | None:
        readings = self.mem[prio]
        i = bisect.bisect_right(readings, cursor, key=_SEQ)
        return readings[i] if i < len(readings) else None

    def due(self, upto: int, floors: Mapping[Priority, int]) -> list[StoredReading]:
        """Readings numbered up to ``upto`` that some destination still lacks, in sequence order."""
        out = []
        for prio, readings in self.mem.items():
            end = bisect.bisect_right(readings, upto, key=_SEQ)
            floor = floors[prio]
            out += [r for r in readings[:end] if r.seq > floor]
        out.sort(key=_SEQ)
        return out

    def forget(self, upto: int, floors: Mapping[Priority, int], written: Sequence[StoredReading] = ()) -> None:
        """Readings now in the file (``written``), and those up to ``upto`` every destination has."""
        gone = {r.seq for r in written}
        for prio, readings in self.mem.items():
            end = bisect.bisect_right(readings, min(upto, floors[prio]), key=_SEQ)
            if end or gone:
                self.mem[prio] = [r for r in readings[end:] if r.seq not in gone]
        self.committed_top = dict(self.core.top)

    def unsent_in_memory(self, cursors: Mapping[tuple[str, Priority], int], dest: str, prio: Priority) -> int:
        readings = self.mem[prio]
        return len(readings) - bisect.bisect_right(readings, cursors[(dest, prio)], key=_SEQ)

    def retime(self, offset_s: float) -> None:
        """This boot's boot-relative readings in memory get their wall time."""
        for prio, readings in self.mem.items():
            self.mem[prio] = [
                dataclasses.replace(r, ts=r.ts + offset_s, boot=None) if r.boot == self._boot else r for r in readings
            ]
        self.unnumbered = deque(
            dataclasses.replace(r, ts=r.ts + offset_s, boot_relative=False) if r.boot_relative else r
            for r in self.unnumbered
        )


def _head(
    series: list[tuple[int, str, str, str]], acks: Mapping[tuple[str, Priority], int]
) -> dict[str, object] | None:
    head: dict[str, object] = {}
    if series:
        head["series"] = [list(s) for s in series]
    if acks:
        head["acks"] = [[d, int(p), s] for (d, p), s in acks.items()]
    return head or None
