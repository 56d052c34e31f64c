"""Writing to the file: what is due, numbering when the tail cannot take readings, pruning.

A mixin of ``edgeagent.store.Store`` (its commit side); see that module for the why.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from edgeagent.clock import boot_clock
from edgeagent.errors import StoreError
from edgeagent.model import Priority, StoredReading
from edgeagent.store.core import RESERVE_SEQS, _Core
from edgeagent.store.journal import Journal
from edgeagent.store.schema import BLOCKS
from edgeagent.store.side import Counters
from edgeagent.store.types import DestinationFilter

log = logging.getLogger("edgeagent.store")

# The tail is started afresh (holding only what memory holds) once it is this large.
TAIL_ROTATE_BYTES = 1 << 20


class _Commits:
    """The commit side of the store (runs on the event loop, hands SQLite work to the thread)."""

    if TYPE_CHECKING:
        _core: _Core
        _journal: Journal
        _commit_lock: asyncio.Lock
        _counters: Counters
        _marks: deque[tuple[float, int]]
        _cursors_dirty: bool
        _needs_retime: bool
        filters: dict[str, DestinationFilter]
        commit_interval_s: float
        commit_max_readings: int

        async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any: ...
        def _journal_now(self) -> None: ...
        def _made_durable(self, readings: list[Any]) -> None: ...

    async def flush(self) -> None:
        """Commit everything not yet delivered to every destination, now."""
        await self._commit(everything=True)

    async def _commit(self, *, everything: bool) -> None:
        """Write what is due: readings a destination still lacks a commit interval after they
        were numbered (all of them with ``everything``), alarms at once, and readings the tail
        could not take; then keep the reservation ahead and the tail short."""
        try:
            await self._commit_due(everything)
        except StoreError as exc:
            if self._counters.last_error != str(exc):
                log.error("%s; readings stay in memory and are retried", exc)
            self._counters.last_error = str(exc)
            raise

    async def _commit_due(self, everything: bool) -> None:
        async with self._commit_lock:
            j, core = self._journal, self._core
            self._journal_now()
            now = time.monotonic()
            self._marks.append((now, j.counter))
            upto = j.counter if everything else 0
            while self._marks and self._marks[0][0] <= now - self.commit_interval_s:
                upto = max(upto, self._marks.popleft()[1])
            floors = {p: core._ack_floor(p) for p in BLOCKS}
            due = j.due(upto, floors)
            if due:
                await self._write(due)
            j.forget(upto, floors, due)
            while j.unnumbered and (j.tail.broken or everything):
                # Numbered by this commit, so no other number may be handed out meanwhile.
                j.paused = True
                try:
                    taken = j.take(core.budgets, self.commit_max_readings)
                    if taken is None:  # the reservation is used up: extend it first
                        await self._write([], reserve=j.counter + RESERVE_SEQS)
                        continue
                    await self._write(j.stored(taken))
                    j.keep(taken, in_memory=False)
                finally:
                    j.paused = False
                self._made_durable(taken.readings)
            if core.reserved_upto - j.counter < RESERVE_SEQS // 2:
                await self._write([], reserve=j.counter + RESERVE_SEQS)
            if j.tail.broken or j.tail.size > TAIL_ROTATE_BYTES:
                if j.start_tail() and self._cursors_dirty:
                    self._cursors_dirty = False
            else:
                j.note_acks()
            if j.unnumbered:
                self._journal_now()

    async def _write(self, readings: list[StoredReading], *, reserve: int | None = None) -> None:
        """One transaction: readings, what they need that the file lacks, drop counts, cursors."""
        j, core = self._journal, self._core
        series = [s for s in j.new_series if s[0] > core.series_saved]
        boots, drops = list(j.new_boots), dict(j.drops)
        if reserve is None and readings and core.reserved_upto - readings[-1].seq < RESERVE_SEQS // 2:
            reserve = max(j.counter, readings[-1].seq) + RESERVE_SEQS
        cursors = self._cursor_items() if self._cursors_dirty else []
        freed = await self._run(
            core.commit,
            readings,
            series=series,
            boots=boots,
            drops=drops,
            reserve=reserve,
            cursors=cursors,
            per_block=self.commit_max_readings,
        )
        j.new_series = [s for s in j.new_series if s[0] > core.series_saved]
        del j.new_boots[: len(boots)]
        for key, n in drops.items():
            j.drops[key] -= n
            if not j.drops[key]:
                del j.drops[key]
        if cursors:
            self._cursors_dirty = False
        if self._counters.last_error is not None:
            log.info("store writes work again")
            self._counters.last_error = None
        for prio, f in freed.items():
            self._forget_unsent(prio, f.dropped)
        j.committed_top = dict(core.top)

    def _forget_unsent(self, prio: Priority, dropped: list[int]) -> None:
        for dest, filt in self.filters.items():
            if prio in filt.classes:
                cursor = self._core.cursors[(dest, prio)]
                gone = len(dropped) - bisect.bisect_right(dropped, cursor)
                self._core.unsent[(dest, prio)] = max(0, self._core.unsent[(dest, prio)] - gone)

    def _cursor_items(self) -> list[tuple[str, Priority, int]]:
        return [(d, p, s) for (d, p), s in self._core.cursors.items()]

    async def retime(self) -> int:
        """Turn this boot's boot-relative times into wall times, now that the clock is set."""
        async with self._commit_lock:
            offset = time.time() - boot_clock()
            j = self._journal
            j.retime(offset)
            n = 0
            if self._core.this_boot_from is not None:
                n = int(await self._run(self._core.retime, offset, self._core.this_boot_from))
            j.start_tail()  # so the tail no longer holds them timed from the boot
            self._needs_retime = False
        if n:
            log.warning("the wall clock is set: %d readings of this boot timed from boot now carry wall times", n)
        return n

    async def prune(self) -> int:
        """Delete from the file what every destination has; write the counter and cursors."""
        async with self._commit_lock:
            n = int(await self._run(self._core.prune, self._journal.counter, self._cursor_items()))
            if n:
                self._cursors_dirty = False  # written with the deletion
            self._journal.committed_top = dict(self._core.top)
            return n
