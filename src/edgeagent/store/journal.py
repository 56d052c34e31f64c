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
from edgeagent.store.core import _Core
from edgeagent.store.numbered import Numbered, memory_batch
from edgeagent.store.schema import BLOCKS
from edgeagent.store.tail import TailWriter, make_payload, tail_path
from edgeagent.store.types import Batch, Budget, DestinationFilter

# Budget bytes a reading is taken to cost before its class has a block to measure.
DEFAULT_READING_BYTES = 4
_SEQ = attrgetter("seq")


@dataclasses.dataclass(slots=True)
class Taken:
    """Readings just numbered (from ``first``), the waiting readings they came from, and what was refused."""

    first: int
    readings: list[Reading]
    originals: list[Reading]
    rejected: dict[Priority, int]
    boot: tuple[int, str] | None

    @property
    def last(self) -> int:
        return self.first + len(self.readings) - 1

    def rows(self) -> list[tuple[int, Reading]]:
        return list(enumerate(self.readings, self.first))


class Journal:
    """The readings of one buffer that are not in its file: unnumbered, or numbered and in the tail."""

    def __init__(self, core: _Core, unnumbered: deque[Reading] | None = None) -> None:
        self.core = core
        self.tail = TailWriter(tail_path(core.path))
        self.counter = core.last_seq  # the last number handed out
        self.paused = False  # a commit is numbering readings itself: the tail must wait
        self.unnumbered: deque[Reading] = unnumbered if unnumbered is not None else deque()
        self._boot = boot_id()
        self.mem: dict[Priority, Numbered] = {p: Numbered(p, self._boot) for p in BLOCKS}
        self.committed_top = dict(core.top)  # the blocks' highest seq per class, as this loop knows it
        self.new_series: list[tuple[int, str, str, str]] = []  # not in the file yet
        self.new_boots: list[tuple[int, str]] = []
        self.drops: dict[tuple[Priority, str], int] = {}  # counted, not yet in the file
        self._series_in_tail = core.series_saved
        # reject_new classes found full, with their bytes then: full until the file gives room back.
        self._full_at: dict[Priority, int] = {}
        self._acks_in_tail: dict[tuple[str, Priority], int] = {}

    # -- the tail ------------------------------------------------------------------

    def start_tail(self) -> bool:
        """A fresh tail holding what only memory holds now: unsaved series, cursors, readings."""
        core = self.core
        header = {"bid": core.buffer_id, "boot": self._boot, "last_seq": self.counter}
        series = [s for s in self.new_series if s[0] > core.series_saved]
        acks = dict(core.cursors)
        segments = [(p, self._segment(rs)) for p, rs in self.mem.items() if rs]
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

    def take(self, budgets: Mapping[Priority, Budget], limit: int) -> Taken | None:
        """Number up to ``limit`` waiting readings, within the reservation (full reject_new
        classes refuse theirs first). The numbers are only handed out by ``keep``, once the
        readings are durable; until then nothing else may be numbered (see ``paused``)."""
        n = min(len(self.unnumbered), self.core.reserved_upto - self.counter, limit)
        if n <= 0:
            return None
        waiting = [self.unnumbered[i] for i in range(n)]
        kept, rejected = self._reject_over_budget(waiting, budgets)
        first = self.counter + 1
        boot = self._register(kept, first)
        return Taken(first, kept, waiting, rejected, boot)

    def keep(self, taken: Taken, *, in_memory: bool) -> None:
        assert taken.first == self.counter + 1, "numbers kept out of order"
        self.counter = taken.last
        for _ in taken.originals:
            self.unnumbered.popleft()
        if taken.boot is not None:
            self._new_boot(*taken.boot)
        for prio, count in taken.rejected.items():
            self.drops[(prio, "rejected_full")] = self.drops.get((prio, "rejected_full"), 0) + count
        if in_memory:
            mem = self.mem
            for seq, r in enumerate(taken.readings, taken.first):
                mem[r.priority].append(seq, r)
        self.core.last_seq = self.counter

    def stored(self, taken: Taken) -> list[StoredReading]:
        return [self.mem[r.priority].stored(seq, r) for seq, r in enumerate(taken.readings, taken.first)]

    def journal(self, budgets: Mapping[Priority, Budget], max_memory: int) -> Taken | None:
        """Number what waits and write it to the tail in one record; return what became sendable."""
        if self.tail.broken or self.paused:
            return None
        taken = self.take(budgets, max_memory - self.in_memory())
        if taken is None:
            return None
        series = [s for s in self.new_series if s[0] > self._series_in_tail]
        by_class: dict[Priority, list[tuple[int, Reading, bool]]] = {}
        for seq, r in enumerate(taken.readings, taken.first):
            by_class.setdefault(r.priority, []).append((seq, r, r.boot_relative))
        segments = [(p, blocks.encode_rows(rows, self.core.series)) for p, rows in by_class.items()]
        if not self.tail.append(make_payload(segments, _head(series, {}))):
            return None  # not numbered after all: nothing of them left the store
        if series:
            self._series_in_tail = series[-1][0]
        self.keep(taken, in_memory=True)
        return taken

    def _segment(self, part: Numbered) -> bytes:
        return blocks.encode_rows(((s, r, b is not None) for s, r, b in part.rows()), self.core.series)

    def _register(self, readings: list[Reading], first: int) -> tuple[int, str] | None:
        """Give new series their ids; the first boot-relative reading's number and boot, if any."""
        core = self.core
        series, by_id = core.series, core.series_by_id
        boot_first: tuple[int, str] | None = None
        for i, r in enumerate(readings):
            key = (r.device, r.point, r.unit)
            if key not in series:
                sid = max(by_id, default=0) + 1
                series[key] = sid
                by_id[sid] = key
                self.new_series.append((sid, *key))
            if r.boot_relative and boot_first is None:
                boot_first = (first + i, self._boot)
        return boot_first

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
        part = self.mem[prio]
        i = part.after(cursor)
        if i >= len(part):
            return None
        return memory_batch(destination, part[i : i + limit], filt, self.core.buffer_id)

    def first_after(self, prio: Priority, cursor: int) -> StoredReading | None:
        part = self.mem[prio]
        i = part.after(cursor)
        return part[i] if i < len(part) else None

    def due(self, upto: int, floors: Mapping[Priority, int]) -> list[StoredReading]:
        """Readings numbered up to ``upto`` that some destination still lacks, in sequence order;
        alarms whatever their age (an alarm is written through to the card at once)."""
        out = []
        for prio, part in self.mem.items():
            end = len(part) if prio == Priority.ALARM else part.after(upto)
            start = part.after(floors[prio])
            out += part[start:end] if start < end else []
        out.sort(key=_SEQ)
        return out

    def forget(self, upto: int, floors: Mapping[Priority, int], written: Sequence[StoredReading] = ()) -> None:
        """Readings now in the file (``written``), and those up to ``upto`` every destination has."""
        gone = {r.seq for r in written}
        for prio, part in self.mem.items():
            end = part.after(min(upto, floors[prio]))
            if end or gone:
                part.keep(end, gone)
        self.committed_top = dict(self.core.top)

    def unsent_in_memory(self, cursors: Mapping[tuple[str, Priority], int], dest: str, prio: Priority) -> int:
        part = self.mem[prio]
        return len(part) - part.after(cursors[(dest, prio)])

    def waiting(self, floors: Mapping[Priority, int]) -> int:
        """Readings not in the file that some destination still lacks, numbered or not."""
        return len(self.unnumbered) + sum(len(part) - part.after(floors[p]) for p, part in self.mem.items())

    def everything(self) -> list[StoredReading]:
        return sorted((r for part in self.mem.values() for r in part), key=_SEQ)

    def retime(self, offset_s: float) -> None:
        """This boot's boot-relative readings in memory get their wall time."""
        for part in self.mem.values():
            part.readings = [
                dataclasses.replace(r, ts=r.ts + offset_s, boot_relative=False) if r.boot_relative else r
                for r in part.readings
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
