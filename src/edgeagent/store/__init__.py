"""The local buffer: every accepted reading, in SQLite, until every upstream has it.

Shape, and why:
- One writer. All SQLite work happens on one thread with one connection; the event
  loop hands it batches and gets futures back, so a slow SD card never blocks polling.
- Readings wait in memory for at most ``commit_interval_ms`` (or until
  ``commit_max_readings`` are pending) and are committed together: one transaction per
  batch, not per reading, which is what keeps an SD card alive. A reading is *accepted*
  once committed; a crash may lose the readings still pending, never a committed one.
- Sequence numbers are assigned at commit, from a counter kept in the same
  transaction, so they are gapless, increasing and never reused, even after every row
  has been deleted or the process was killed mid-commit.
- Every buffer has an identity (a random id made with it). Receivers key readings on
  (gateway, buffer id, seq), so a buffer replaced after damage, or a new SD card, can
  never have its new readings taken for old ones.
- One table per priority class, keyed by ``seq`` (the rowid, so no extra index is
  written). Rows are small, because every byte of a row is written twice (WAL, then
  checkpoint): ``(seq, ts_ms, series, value, flags)`` with the device, point and unit
  interned in ``series``, and a value such as 123.4 kept as the integer 1234 with its
  decimal count in ``flags`` (2-3 bytes instead of an 8-byte REAL), exactly.
- ``last_seq`` is persisted only when rows are deleted; otherwise the highest stored
  ``seq`` is the counter, which saves a page write per commit.
- WAL mode with ``synchronous=NORMAL`` for telemetry (a crash of the process loses
  nothing committed; a power cut keeps the file consistent); a transaction that holds an
  alarm is committed with ``synchronous=FULL``.
- Each destination has a cursor per class; rows every destination has acknowledged
  are deleted, and their pages reused, so the file stays bounded without VACUUM.
- A damaged file is moved aside (never deleted), its unsent readings are salvaged into
  a buffer that keeps their identity and numbers and is sent first, and a fresh store
  numbers on above the highest number still known; the agent raises an alarm about it.
- A full disk never stops anything: readings wait in memory (bounded, every one shed
  counted), acknowledgements move the cursors in memory and are written when space
  returns, and the WAL is checkpointed and truncated early when space runs low.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeagent.aio import wait_event
from edgeagent.clock import PLAUSIBLE_FROM, boot_clock
from edgeagent.errors import StoreCorrupt, StoreError
from edgeagent.model import Priority, Reading, StoredReading
from edgeagent.store.codec import decode_value, encode_value
from edgeagent.store.core import _Core, _translate
from edgeagent.store.damage import Damage, move_aside, salvage_files
from edgeagent.store.schema import TABLES
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


@dataclass(slots=True)
class _Counters:
    committed_total: int = 0
    produced_total: int = 0
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    last_error: str | None = None

    def drop(self, priority: Priority, reason: str, n: int = 1) -> None:
        per = self.dropped.setdefault(priority.name.lower(), {})
        per[reason] = per.get(reason, 0) + n


class Store:
    """The asyncio face of the buffer: ``append`` is cheap; commits happen in batches."""

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
        self._salvage: list[_Core] = []
        self._acked_since_prune = False
        self._last_prune = 0.0
        self._last_space_check = 0.0
        self._executor: ThreadPoolExecutor | None = None
        self._pending: deque[Reading] = deque()
        self._wake = asyncio.Event()
        self._listeners: list[asyncio.Event] = []
        self._task: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()
        self._counters = _Counters()
        self._beat = beat
        self._hang = False
        self._closing = False
        self._needs_retime = False
        self._cursor_error: str | None = None
        self._last_probe = time.monotonic()
        self._corrupt: str | None = None  # why the file is bad, until it has been replaced

    def debug_hang(self) -> None:
        """Make the commit loop hang for real (a test of the watchdog); see the agent."""
        self._hang = True

    async def _run(self, fn: Any, *args: Any) -> Any:
        """Run on the store's thread; a SQLite error comes back as the project's own."""
        if self._executor is None:
            raise StoreError("store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            error = _translate(exc)
            if isinstance(error, StoreCorrupt) and self._corrupt is None:
                self._corrupt = str(error)
                self._wake.set()  # the commit loop replaces the file
            raise error from exc

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
        self._needs_retime = self._core.this_boot_from is not None
        await self._run(self._open_salvage)
        self._task = asyncio.create_task(self._commit_loop(), name="store-commit")

    def _open_salvage(self) -> None:
        opened = {c.path for c in self._salvage}
        for file in salvage_files(self.path):
            if file in opened:
                continue
            core = _Core(file, self.filters, self.budgets)
            try:
                core.open_salvage()
            except Exception as exc:  # noqa: BLE001 - a bad salvage file must not stop the agent
                core._close_quietly()
                log.error("cannot open salvaged buffer %s (%s); left in place", file.name, exc)
                continue
            if core.fully_sent():
                core.delete_files()
                continue
            log.warning("salvaged buffer %s (%s) is sent before new readings", core.buffer_id, file.name)
            self._salvage.append(core)

    async def close(self) -> None:
        """Stop the commit loop, commit what is pending, and close the file."""
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
        with contextlib.suppress(StoreError):
            await self.flush()
        await self._run(self._core.close)
        for core in self._salvage:
            await self._run(core.close)
        self._salvage.clear()
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
        return self._core.last_seq

    def append(self, reading: Reading) -> None:
        """Queue a reading for the next commit. Never blocks and never raises."""
        if reading.ts < PLAUSIBLE_FROM and not reading.boot_relative:
            # The wall clock is not set: keep the time as seconds since boot, exactly.
            since_boot = boot_clock() - (time.time() - reading.ts)
            reading = dataclasses.replace(reading, ts=since_boot, boot_relative=True)
            self._needs_retime = True
        self._counters.produced_total += 1
        pending = self._pending
        if len(pending) >= self.max_pending_readings:
            self._shed_pending()
        pending.append(reading)
        if len(pending) >= self.commit_max_readings:
            self._wake.set()

    def _shed_pending(self) -> None:
        """Memory is bounded while the disk refuses writes: drop the oldest non-alarm."""
        for i, r in enumerate(self._pending):
            if r.priority != Priority.ALARM:
                del self._pending[i]
                self._counters.drop(r.priority, "store_unavailable")
                return

    def subscribe(self) -> asyncio.Event:
        """An event set after every commit, so a sync worker wakes without polling."""
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
        self.filters = dict(filters)
        self.destinations = list(filters)
        for core in [self._core, *self._salvage]:
            await self._run(core.set_filters, dict(filters))

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
                await self.flush()
                if self._needs_retime and time.time() >= PLAUSIBLE_FROM:
                    await self.retime()
                await self._save_cursors()
                if self._acked_since_prune and time.monotonic() - self._last_prune >= PRUNE_EVERY_S:
                    self._acked_since_prune = False
                    self._last_prune = time.monotonic()
                    await self.prune()
            except StoreError as exc:
                # Keep the readings pending, count nothing lost yet, and try again.
                if self._counters.last_error != str(exc):
                    log.error("%s; readings stay in memory and are retried", exc)
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
        """The file went bad while running: handle it as if found at start, keeping what is pending.

        The file is moved aside and its readable unsent rows salvaged (sent first, under
        their old identity); a fresh buffer numbers on above every number given; the
        readings still in memory are committed to it. Nothing stops meanwhile.
        """
        reason = self._corrupt or "damaged"
        async with self._commit_lock:
            old = self._core
            log.error("store %s went bad while running (%s); replacing it", self.path, reason)
            await self._run(old._close_quietly)
            aside = await self._run(move_aside, self.path, reason)
            fresh = _Core(self.path, self.filters, self.budgets, number_above=old.last_seq)
            fresh.damage = Damage("corrupt", f"the buffer went bad while running ({reason})", moved_aside=str(aside))
            await self._run(fresh.open)
            self._core = fresh
            self._corrupt = None
            self._needs_retime = fresh.this_boot_from is not None
            await self._run(self._open_salvage)
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

    async def flush(self) -> None:
        """Commit everything pending now."""
        async with self._commit_lock:
            while self._pending:
                n = min(len(self._pending), self.commit_max_readings)
                batch = [self._pending[i] for i in range(n)]
                await self._run(self._core.commit, batch)
                for _ in range(n):
                    self._pending.popleft()
                self._counters.committed_total += n
                if self._counters.last_error is not None:
                    log.info("store writes work again")
                    self._counters.last_error = None
                for event in self._listeners:
                    event.set()

    async def retime(self) -> int:
        """Turn this boot's boot-relative times into wall times, now that the clock is set."""
        async with self._commit_lock:
            offset = time.time() - boot_clock()
            for i, r in enumerate(self._pending):
                if r.boot_relative:
                    self._pending[i] = dataclasses.replace(r, ts=r.ts + offset, boot_relative=False)
            n = int(await self._run(self._core.retime, offset))
            self._needs_retime = False
        if n:
            log.warning("the wall clock is set: %d readings of this boot timed from boot now carry wall times", n)
        return n

    async def _save_cursors(self) -> None:
        cores = [self._core, *self._salvage]
        saved = all([await self._run(c.save_cursors) for c in cores])
        if saved and self._cursor_error is not None:
            log.info("acknowledgements are written again")
            self._cursor_error = None

    def still_whole(self, batch: Batch) -> bool:
        """False when a budget policy has since deleted readings this batch reaches back to."""
        if batch.buffer_id != self._core.buffer_id:
            return True  # a salvage buffer: no policy deletes from it
        return batch.first_seq > self._core.dropped_upto[batch.priority]

    async def next_batch(self, destination: str, limit: int) -> Batch | None:
        """Salvaged readings first (they are the oldest), then this buffer's."""
        return await self._run(self._read_any, destination, limit)

    def _read_any(self, destination: str, limit: int) -> Batch | None:
        for core in self._salvage:
            batch = core.read_batch(destination, limit)
            if batch is not None:
                return batch
        return self._core.read_batch(destination, limit)

    async def ack(self, batch: Batch) -> None:
        """Move the destination's cursor. Never raises: a cursor the disk refuses is written later."""
        core = self._core_of(batch)
        if core is None:
            return
        args = (batch.destination, batch.priority, batch.scanned_to, len(batch.readings))
        if not await self._run(core.ack, *args) and self._cursor_error is None:
            self._cursor_error = "acknowledgement not written (disk full?)"
            log.error("cannot write acknowledgements (disk full?); kept in memory and written when space returns")
        if core is self._core:
            self._acked_since_prune = True
        elif await self._run(core.fully_sent):
            await self._run(core.delete_files)
            self._salvage.remove(core)
            log.warning("every salvaged reading of buffer %s is delivered; its file is removed", core.buffer_id)

    def _core_of(self, batch: Batch) -> _Core | None:
        if batch.buffer_id == self._core.buffer_id:
            return self._core
        return next((c for c in self._salvage if c.buffer_id == batch.buffer_id), None)

    async def prune(self) -> int:
        return int(await self._run(self._core.prune))

    async def all_readings(self) -> list[StoredReading]:
        return await self._run(self._core.all_readings)

    async def stats(self) -> StoreStats:
        """What the page shows; a file that cannot be read shows as an error, never fails the page."""
        core = self._core
        oldest: dict[str, float | None] = {}
        read_error: str | None = None
        for d in self.destinations:
            try:
                oldest[d] = await self._run(core.oldest_unsent, d)
            except StoreError as exc:
                oldest[d], read_error = None, str(exc)
        salvage = [
            {
                "buffer_id": c.buffer_id,
                "file": c.path.name,
                "unsent": {d: sum(c.unsent[(d, p)] for p in TABLES) for d in self.destinations},
            }
            for c in self._salvage
        ]
        unsent = {
            d: sum(core.unsent[(d, p)] for p in TABLES) + sum(int(s["unsent"][d]) for s in salvage)  # type: ignore[index]
            for d in self.destinations
        }
        return StoreStats(
            path=str(self.path),
            file_bytes=await self._run(core.file_bytes),
            last_seq=core.last_seq,
            pending_commit=len(self._pending),
            committed_total=self._counters.committed_total,
            unsent=unsent,
            oldest_unsent_ts=oldest,
            class_bytes={p.name.lower(): int(core.bytes[p]) for p in TABLES},
            dropped=_merge_counts(core.dropped, self._counters.dropped),
            last_error=self._counters.last_error or self._cursor_error or read_error,
            moved_aside=self.moved_aside,
            buffer_id=core.buffer_id,
            produced_total=self._counters.produced_total,
            salvage=salvage,
        )


def _merge_counts(*parts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for part in parts:
        for cls, reasons in part.items():
            for reason, n in reasons.items():
                out.setdefault(cls, {})[reason] = out.setdefault(cls, {}).get(reason, 0) + n
    return out


def open_core_for_bench(path: Path, budgets: Mapping[Priority, Budget] | None = None) -> _Core:
    """The synchronous core alone, for benchmarks that measure the store without a loop."""
    core = _Core(path, {}, budgets)
    core.open()
    return core
