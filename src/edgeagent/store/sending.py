"""Reading for the sync workers: the file while a destination is behind it, then memory.

A mixin of ``edgeagent.store.Store`` (its sending side); see that module for the why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeagent.model import StoredReading
from edgeagent.store.core import _Core
from edgeagent.store.journal import Journal
from edgeagent.store.schema import BLOCKS
from edgeagent.store.side import Salvage
from edgeagent.store.types import Batch, DestinationFilter


class _Sending:
    """The sending side of the store."""

    if TYPE_CHECKING:
        _core: _Core
        _journal: Journal
        _salvage: Salvage
        _cursors_dirty: bool
        _acked_since_prune: bool
        filters: dict[str, DestinationFilter]

        async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any: ...

    def still_whole(self, batch: Batch) -> bool:
        """False when a budget policy has since deleted readings this batch reaches back to."""
        if batch.buffer_id != self._core.buffer_id:
            return True  # a salvage buffer: no policy deletes from it
        return batch.first_seq > self._core.dropped_upto[batch.priority]

    async def next_batch(self, destination: str, limit: int) -> Batch | None:
        """Salvaged readings first (they are the oldest), then this buffer's: alarms, events,
        telemetry, each from the file while the destination is behind it, then from memory."""
        if self._salvage.cores:
            batch = await self._salvage.next_batch(destination, limit)
            if batch is not None:
                return batch
        filt = self.filters[destination]
        for prio in BLOCKS:
            if prio not in filt.classes:
                continue
            while True:
                core, j = self._core, self._journal
                cursor = core.cursors[(destination, prio)]
                top = j.committed_top[prio]
                if cursor < top:
                    batch = await self._run(core.read_class, destination, prio, limit, cursor)
                    if batch is not None:
                        return batch
                    if j.committed_top[prio] != top or core is not self._core:
                        continue  # written to meanwhile: look again
                batch = j.batch(destination, prio, cursor, limit, filt)
                if batch is not None:
                    return batch
                break
        return None

    async def ack(self, batch: Batch) -> None:
        """Move the destination's cursor. Never raises: cursors are written later."""
        if batch.buffer_id != self._core.buffer_id:
            await self._salvage.ack(batch)
            return
        key = (batch.destination, batch.priority)
        core = self._core
        if batch.scanned_to <= core.cursors[key]:
            return
        core.cursors[key] = batch.scanned_to
        core.unsent[key] = max(0, core.unsent[key] - len(batch.readings))
        self._cursors_dirty = True
        self._acked_since_prune = True

    async def all_readings(self) -> list[StoredReading]:
        """Every reading not yet delivered everywhere (in the file, or in the tail and memory)."""
        stored = await self._run(self._core.all_readings)
        return sorted({r.seq: r for r in [*stored, *self._journal.everything()]}.values(), key=lambda r: r.seq)
