"""The local buffer: every accepted reading, on the card, until every upstream has it.

Shape, and why:
- One writer thread. All SQLite work happens on one thread with one connection; the
  event loop hands it work and gets futures back, so a slow SD card never blocks polling.
- A reading is numbered as soon as the event loop's current step ends (a poll's readings
  together) and written, in the same step, to the *tail* (``store.tail``): one small
  compressed append, no fsync. From then on it survives the process being killed, and a
  sync worker may send it at once, from memory, before any commit: receive time minus
  reading time is milliseconds, not a commit interval.
- Sequence numbers stay gapless, increasing and never reused: after a crash the next
  start takes the tail back (``store.replay``) and numbers on above all it holds. Numbers
  are handed out only within a range reserved durably in the file beforehand (fsync'd),
  so after a power cut, which can take the tail's last seconds with it, numbering goes on
  above the reservation: a gap, never a reuse.
- Readings every destination has acknowledged are forgotten; only those still unsent a
  commit interval after they were numbered (``commit_interval_ms``; an outage) go into the
  SQLite file, as one compressed block per class per commit (``store.blocks``), a few bytes
  a reading, and the tail is cut when it grows. A healthy uplink means next to nothing is
  written but the tail: the SD card's wear per reading is a few bytes.
- Every buffer has an identity (a random id made with it). Receivers key readings on
  (gateway, buffer id, seq), so a buffer replaced after damage, or a new SD card, can
  never have its new readings taken for old ones.
- A table of blocks per priority class, each with a byte budget and a policy when full
  (``store.budget``); every drop counted by class and reason, persisted in the buffer.
- WAL mode with ``synchronous=NORMAL``; a transaction that holds an alarm, or a new
  reservation, is committed with ``synchronous=FULL``.
- Each destination has a cursor per class, moved on acknowledgement (in memory, in the
  tail, and in the file at pruning and when closing); a crash only means a resend.
- A damaged file is moved aside (never deleted) with its tail, its unsent readings are
  salvaged into a buffer that keeps their identity and numbers and is sent first, and a
  fresh store numbers on above the highest number still known; the agent raises an alarm.
- A full disk never stops anything: readings wait in memory unnumbered (bounded, every
  one shed counted) and are numbered by the commit that writes them once space returns;
  acknowledgements move the cursors in memory; the WAL is checkpointed early.
- A reading stamped before the wall clock was set keeps its time relative to the boot
  and gets its wall time when the clock is set (see ``edgeagent.clock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from edgeagent.aio import wait_event
from edgeagent.clock import PLAUSIBLE_FROM, boot_clock
from edgeagent.errors import StoreCorrupt, StoreError
from edgeagent.model import Priority, Reading, StoredReading
from edgeagent.store.codec import decode_value, encode_value
from edgeagent.store.commits import _Commits
from edgeagent.store.core import RESERVE_SEQS, _Core, _translate
from edgeagent.store.damage import Damage, move_aside
from edgeagent.store.journal import Journal
from edgeagent.store.schema import BLOCKS, TABLES
from edgeagent.store.sending import _Sending
from edgeagent.store.side import BenchWriter, Counters, Salvage, stats_of
from edgeagent.store.types import DEFAULT_BUDGETS, Batch, Budget, DestinationFilter, StoreStats

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 2.0
# How often the buffer's ends are read again from the file itself (see _Core.probe).
PROBE_EVERY_S = 5.0
CLOSE_WAIT_S = 5.0
# Below this much free space the WAL is checkpointed and truncated at once.
LOW_SPACE_BYTES = 16 * 1024 * 1024
SPACE_CHECK_EVERY_S = 5.0

__all__ = [
    "BLOCKS",
    "DEFAULT_BUDGETS",
    "TABLES",
    "Batch",
    "Budget",
    "Damage",
    "DestinationFilter",
    "Store",
    "StoreStats",
    "decode_value",
    "encode_value",
    "open_core_for_bench",
]


class Store(_Commits, _Sending):
    """The asyncio face of the buffer: ``append`` is cheap; readings are sendable at once."""

    def __init__(
        self,
        path: Path,
        *,
        destinations: Mapping[str, DestinationFilter] | Iterable[str] = (),
        budgets: Mapping[Priority, Budget] | None = None,
        commit_interval_ms: int = 1000,
        commit_max_readings: int = 1000,
        max_pending_readings: int = 100_000,
        beat: Any = None,
        on_damage: Callable[[Damage], None] | None = None,
    ) -> None:
        self.path = path
        self._on_damage = on_damage
        filters = (
            dict(destinations)
            if isinstance(destinations, Mapping)
            else {name: DestinationFilter() for name in destinations}
        )
        self.filters = filters
        self.budgets = budgets
        self.destinations = list(filters)
        self.commit_interval_s = commit_interval_ms / 1000
        self.commit_max_readings = commit_max_readings
        self.max_pending_readings = max_pending_readings
        self._core = _Core(path, filters, budgets)
        self._journal = Journal(self._core)  # replaced at open
        self._salvage = Salvage(self._run_sync)
        self._acked_since_prune = False
        self._cursors_dirty = False
        self._last_prune = 0.0
        self._last_space_check = 0.0
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._journal_soon = False
        self._marks: deque[tuple[float, int]] = deque()  # (when, counter) at each commit round
        self._wake = asyncio.Event()
        self._listeners: list[asyncio.Event] = []
        self._task: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()
        self._counters = Counters()
        self._beat = beat
        self._hang = False
        self._closing = False
        self._needs_retime = False
        self._last_probe = time.monotonic()
        self._corrupt: str | None = None  # why the file is bad, until it has been replaced

    def debug_hang(self) -> None:
        """Make the commit loop hang for real (a test of the watchdog); see the agent."""
        self._hang = True

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run on the store's thread; a SQLite error comes back as the project's own."""
        if self._executor is None:
            raise StoreError("store is not open")
        call = (lambda: fn(*args, **kwargs)) if kwargs else (lambda: fn(*args))
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except sqlite3.Error as exc:
            error = _translate(exc)
        except StoreCorrupt as exc:
            error = exc
        if isinstance(error, StoreCorrupt) and self._corrupt is None:
            self._corrupt = str(error)
            self._wake.set()  # the commit loop replaces the file
        raise error

    async def _run_sync(self, fn: Any, *args: Any) -> Any:
        return await self._run(fn, *args)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The commit loop: a task the agent watches like a bus."""
        return self._task

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        try:
            await self._run(self._core.open)
        except (StoreError, OSError, Exception) as exc:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._loop = asyncio.get_running_loop()
        self._start_journal(self._core)
        self._needs_retime = self._core.this_boot_from is not None
        await self._salvage.open(self.path, self.filters, self.budgets)
        self._task = asyncio.create_task(self._commit_loop(), name="store-commit")

    def _start_journal(self, core: _Core) -> None:
        self._journal = Journal(core, self._journal.unnumbered)
        self._marks.clear()
        if not self._journal.start_tail():
            log.error("%s; readings wait in memory and are numbered when committed", self._journal.tail.broken)

    async def close(self) -> None:
        """Stop the commit loop, commit what is not delivered, and close the file."""
        if self._task is not None:
            self._closing = True
            self._wake.set()
            done, _ = await asyncio.wait({self._task}, timeout=CLOSE_WAIT_S)
            if not done:  # hung (the debug hang, say): cancel it
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if self._executor is None:
            return
        closed = False
        with contextlib.suppress(StoreError):
            await self.flush()
            closed = not self._journal.unnumbered and not self._journal.in_memory()
        await self._run(self._core.close, self._journal.counter, self._cursor_items())
        if closed:
            self._journal.tail.remove()  # everything it held is in the file now
        else:
            self._journal.tail.close()
        await self._salvage.close()
        self._executor.shutdown(wait=True)
        self._executor = None

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def damage(self) -> Damage | None:
        """What was wrong with the buffer found at start, if anything."""
        return self._core.damage

    @property
    def moved_aside(self) -> str | None:
        """Where a damaged store file was moved at start, if one was."""
        return self._core.damage.moved_aside if self._core.damage else None

    @property
    def created(self) -> bool:
        """True when no buffer was there and this one is new (a first start, a new SD card)."""
        return self._core.created

    @property
    def buffer_id(self) -> str:
        return self._core.buffer_id

    @property
    def last_seq(self) -> int:
        """The last sequence number handed out."""
        return self._journal.counter

    @property
    def _pending(self) -> list[Reading | StoredReading]:
        """Readings not in the file: waiting for a number, or numbered and in the tail only."""
        j = self._journal
        return [*j.everything(), *j.unnumbered]

    def append(self, reading: Reading) -> None:
        """Queue a reading; it is numbered (and sendable) when this step of the loop ends. Never raises."""
        if reading.ts < PLAUSIBLE_FROM and not reading.boot_relative:
            # The wall clock is not set: keep the time as seconds since boot, exactly.
            since_boot = boot_clock() - (time.time() - reading.ts)
            reading = dataclasses.replace(reading, ts=since_boot, boot_relative=True)
            self._needs_retime = True
        self._counters.produced_total += 1
        waiting = self._journal.unnumbered
        if len(waiting) >= self.max_pending_readings:
            self._shed_pending(waiting)
        waiting.append(reading)
        if not self._journal_soon and self._loop is not None:
            self._journal_soon = True
            self._loop.call_soon(self._journal_now)
        if len(waiting) >= self.commit_max_readings:
            self._wake.set()

    def _shed_pending(self, waiting: deque[Reading]) -> None:
        """Memory is bounded while the disk refuses writes: drop the oldest non-alarm."""
        for i, r in enumerate(waiting):
            if r.priority != Priority.ALARM:
                del waiting[i]
                self._counters.drop(r.priority, "store_unavailable")
                return

    def _journal_now(self) -> None:
        """Number what waits and write it to the tail: from here on it may be sent."""
        self._journal_soon = False
        j = self._journal
        if self._corrupt is not None or self._hang or self._executor is None:
            return
        taken = j.journal(self._core.budgets, self.max_pending_readings)
        if taken is not None:
            self._made_durable(taken.readings)
        if taken is not None and j.core.reserved_upto - j.counter < RESERVE_SEQS // 2:
            self._wake.set()  # reserve more numbers before these run out

    def _made_durable(self, readings: list[Reading]) -> None:
        """Readings have their numbers and will survive a crash: they count, and may be sent."""
        self._counters.committed_total += len(readings)
        per_class = dict.fromkeys(BLOCKS, 0)
        for r in readings:
            per_class[r.priority] += 1
        unsent = self._core.unsent
        for dest, filt in self.filters.items():
            for prio in filt.classes:
                unsent[(dest, prio)] += per_class[prio]
        for event in self._listeners:
            event.set()
        if per_class[Priority.ALARM]:
            self._wake.set()  # an alarm is written through to the card at once

    def subscribe(self) -> asyncio.Event:
        """An event set whenever readings become sendable, so a sync worker wakes without polling."""
        event = asyncio.Event()
        self._listeners.append(event)
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        if event in self._listeners:
            self._listeners.remove(event)

    async def reconfigure(
        self,
        *,
        budgets: Mapping[Priority, Budget],
        commit_interval_ms: int,
        commit_max_readings: int,
        max_pending_readings: int,
    ) -> None:
        """New store settings while running (a reload): the next commit uses them."""
        self.commit_interval_s = commit_interval_ms / 1000
        self.commit_max_readings = commit_max_readings
        self.max_pending_readings = max_pending_readings
        self.budgets = budgets
        await self._run(self._core.set_budgets, dict(budgets))
        self._wake.set()

    async def set_destinations(self, filters: Mapping[str, DestinationFilter]) -> None:
        """New destinations or filters while running: each keeps its cursors where they were."""
        async with self._commit_lock:
            self.filters = dict(filters)
            self.destinations = list(filters)
            core, j = self._core, self._journal
            cursors, unsent = await self._run(core.cursor_state, dict(filters))
            for (dest, prio), n in unsent.items():
                if prio in filters[dest].classes:
                    unsent[(dest, prio)] = n + j.unsent_in_memory(cursors, dest, prio)
            core.filters, core.destinations = dict(filters), list(filters)
            core.cursors, core.unsent = cursors, unsent
        await self._salvage.set_filters(filters)

    # -- the commit loop -------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while not self._closing:
            if self._hang:
                log.warning("store commit loop hanging on request (debug signal)")
                await asyncio.Event().wait()
            await wait_event(self._wake, self.commit_interval_s)
            self._wake.clear()
            if self._closing:
                return
            try:
                if self._corrupt is not None:
                    await self._replace_damaged()
                await self._keep_space()
                await self._probe()
                await self._commit(everything=False)
                if self._needs_retime and time.time() >= PLAUSIBLE_FROM:
                    await self.retime()
                await self._salvage.save_cursors()
                if self._acked_since_prune and time.monotonic() - self._last_prune >= PRUNE_EVERY_S:
                    self._acked_since_prune = False
                    self._last_prune = time.monotonic()
                    await self.prune()
            except StoreError as exc:
                # Keep the readings, count nothing lost yet, and try again.
                if self._counters.last_error != str(exc):
                    log.error("%s; store work is retried", exc)
                self._counters.last_error = str(exc)
                with contextlib.suppress(StoreError):
                    await self._run(self._core.checkpoint)
            if self._beat is not None:
                self._beat()

    async def _probe(self) -> None:
        now = time.monotonic()
        if now - self._last_probe >= PROBE_EVERY_S:
            self._last_probe = now
            await self._run(self._core.probe)

    async def _replace_damaged(self) -> None:
        """The file went bad while running: handle it as if found at start, keeping what waits.

        The file is moved aside with its tail, which holds every numbered reading not in
        the file, so those are salvaged (sent first, under their old identity); a fresh
        buffer numbers on above every number given; readings waiting for a number go to it.
        """
        reason = self._corrupt or "damaged"
        async with self._commit_lock:
            old = self._core
            log.error("store %s went bad while running (%s); replacing it", self.path, reason)
            self._journal.tail.close()
            await self._run(old._close_quietly)
            aside = await self._run(move_aside, self.path, reason)
            fresh = _Core(self.path, self.filters, self.budgets, number_above=self._journal.counter)
            fresh.damage = Damage("corrupt", f"the buffer went bad while running ({reason})", moved_aside=str(aside))
            await self._run(fresh.open)
            self._core = fresh
            self._corrupt = None
            self._start_journal(fresh)
            self._needs_retime = fresh.this_boot_from is not None
            await self._salvage.open(self.path, self.filters, self.budgets)
        damage = fresh.damage
        assert damage is not None
        log.error("%s", damage.message())
        if self._on_damage is not None:
            self._on_damage(damage)

    async def _keep_space(self) -> None:
        """When the card is nearly full, give the WAL's space back before a write needs it."""
        now = time.monotonic()
        if now - self._last_space_check < SPACE_CHECK_EVERY_S:
            return
        self._last_space_check = now
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return
        if st.f_bavail * st.f_frsize < LOW_SPACE_BYTES:
            await self._run(self._core.checkpoint)

    async def stats(self) -> StoreStats:
        """What the page shows; a file that cannot be read shows as an error, never fails the page."""
        return await stats_of(self)


def open_core_for_bench(path: Path, budgets: Mapping[Priority, Budget] | None = None) -> BenchWriter:
    """The synchronous side alone, for benchmarks that fill a file without a loop."""
    return BenchWriter(path, budgets)
