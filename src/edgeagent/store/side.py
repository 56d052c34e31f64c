"""Beside the buffer in use: salvage buffers, counters, the status page's figures, benches."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeagent.errors import StoreError
from edgeagent.model import Priority, Reading, StoredReading
from edgeagent.store.core import _Core
from edgeagent.store.damage import salvage_files
from edgeagent.store.schema import BLOCKS
from edgeagent.store.types import Batch, Budget, DestinationFilter, StoreStats

if TYPE_CHECKING:
    from edgeagent.store import Store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Counters:
    committed_total: int = 0  # readings made durable (numbered into the tail, or committed)
    produced_total: int = 0
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    last_error: str | None = None
    cursor_error: str | None = None

    def drop(self, priority: Priority, reason: str, n: int = 1) -> None:
        per = self.dropped.setdefault(priority.name.lower(), {})
        per[reason] = per.get(reason, 0) + n


class Salvage:
    """Buffers salvaged from damaged files: sent before anything newer, deleted once delivered."""

    def __init__(self, run: Callable[..., Awaitable[Any]]) -> None:
        self._run = run
        self.cores: list[_Core] = []

    async def open(
        self, path: Path, filters: Mapping[str, DestinationFilter], budgets: Mapping[Priority, Budget] | None
    ) -> None:
        await self._run(self._open, path, dict(filters), budgets)

    def _open(
        self, path: Path, filters: dict[str, DestinationFilter], budgets: Mapping[Priority, Budget] | None
    ) -> None:
        opened = {c.path for c in self.cores}
        for file in salvage_files(path):
            if file in opened:
                continue
            core = _Core(file, filters, budgets)
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
            self.cores.append(core)

    async def next_batch(self, destination: str, limit: int) -> Batch | None:
        for core in list(self.cores):
            batch = await self._run(core.read_batch, destination, limit)
            if batch is not None:
                return batch
        return None

    async def ack(self, batch: Batch) -> None:
        core = next((c for c in self.cores if c.buffer_id == batch.buffer_id), None)
        if core is None:
            return
        args = (batch.destination, batch.priority, batch.scanned_to, len(batch.readings))
        if not await self._run(core.ack, *args):
            log.error("cannot write a salvage buffer's acknowledgements (disk full?); written when space returns")
        if await self._run(core.fully_sent):
            await self._run(core.delete_files)
            self.cores.remove(core)
            log.warning("every salvaged reading of buffer %s is delivered; its file is removed", core.buffer_id)

    async def save_cursors(self) -> None:
        for core in self.cores:
            await self._run(core.save_cursors)

    async def set_filters(self, filters: Mapping[str, DestinationFilter]) -> None:
        for core in self.cores:
            await self._run(core.set_filters, dict(filters))

    async def close(self) -> None:
        for core in self.cores:
            await self._run(core.close)
        self.cores.clear()


async def stats_of(store: Store) -> StoreStats:
    """The buffer's figures for the status page and the tests."""
    core, j = store._core, store._journal
    oldest: dict[str, float | None] = {}
    read_error: str | None = None
    for d in store.destinations:
        try:
            oldest[d] = await _oldest_unsent(store, d)
        except StoreError as exc:
            oldest[d], read_error = None, str(exc)
    salvage = [
        {
            "buffer_id": c.buffer_id,
            "file": c.path.name,
            "unsent": {d: sum(c.unsent.get((d, p), 0) for p in BLOCKS) for d in store.destinations},
        }
        for c in store._salvage.cores
    ]
    unsent = {
        d: sum(core.unsent.get((d, p), 0) for p in BLOCKS) + sum(int(s["unsent"][d]) for s in salvage)  # type: ignore[index]
        for d in store.destinations
    }
    waiting = j.waiting({p: core._ack_floor(p) for p in BLOCKS})
    counters = store._counters
    return StoreStats(
        path=str(store.path),
        file_bytes=await store._run(core.file_bytes),
        last_seq=j.counter,
        pending_commit=waiting,
        committed_total=counters.committed_total,
        unsent=unsent,
        oldest_unsent_ts=oldest,
        class_bytes={p.name.lower(): int(core.bytes[p]) for p in BLOCKS},
        dropped=_merge_counts(core.dropped, _pending_drops(j.drops), counters.dropped),
        last_error=counters.last_error or (j.tail.broken if j.tail.broken != "closed" else None) or read_error,
        moved_aside=store.moved_aside,
        buffer_id=core.buffer_id,
        produced_total=counters.produced_total,
        salvage=salvage,
    )


async def _oldest_unsent(store: Store, destination: str) -> float | None:
    core, j = store._core, store._journal
    oldest: float | None = None
    for prio in BLOCKS:
        if prio not in store.filters[destination].classes:
            continue
        cursor = core.cursors[(destination, prio)]
        first: StoredReading | None = None
        if cursor < j.committed_top[prio]:
            first = await store._run(core.first_after, prio, cursor)
        if first is None:
            first = j.first_after(prio, cursor)
        if first is not None and (oldest is None or first.ts < oldest):
            oldest = first.ts
    return oldest


def _pending_drops(drops: Mapping[tuple[Priority, str], int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (prio, reason), n in drops.items():
        out.setdefault(prio.name.lower(), {})[reason] = n
    return out


def _merge_counts(*parts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for part in parts:
        for cls, reasons in part.items():
            for reason, n in reasons.items():
                out.setdefault(cls, {})[reason] = out.setdefault(cls, {}).get(reason, 0) + n
    return out


class BenchWriter:
    """Readings numbered and committed straight into a file, as the agent would leave them
    after an outage: for benchmarks that fill a backlog without an event loop."""

    def __init__(self, path: Path, budgets: Mapping[Priority, Budget] | None = None) -> None:
        self.core = _Core(path, {}, budgets)
        self.core.open()

    def commit(self, readings: Sequence[Reading]) -> int:
        core = self.core
        new: list[tuple[int, str, str, str]] = []
        out = []
        seq = core.last_seq
        for r in readings:
            key = (r.device, r.point, r.unit)
            if key not in core.series:
                sid = max(core.series_by_id, default=0) + 1
                core.series[key], core.series_by_id[sid] = sid, key
                new.append((sid, *key))
            seq += 1
            out.append(StoredReading(seq, r.device, r.point, r.ts, r.value, r.unit, r.quality, r.priority))
        reserve = seq + 100_000 if core.reserved_upto < seq else None
        core.commit(out, series=new, reserve=reserve)
        return seq

    def close(self) -> None:
        self.core.close(self.core.last_seq)
