"""The small values the store hands out and takes in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from edgeagent.model import Priority, StoredReading


@dataclass(frozen=True, slots=True)
class DestinationFilter:
    """What one destination receives: some priority classes, optionally only some devices."""

    classes: frozenset[Priority] = frozenset(Priority)
    devices: frozenset[str] | None = None  # None: every device


@dataclass(frozen=True, slots=True)
class Budget:
    """Bytes a class may use, and the policy when it is full."""

    max_bytes: int
    policy: str  # "drop_oldest" | "thin" | "reject_new"
    thin_keep_every: int = 2


DEFAULT_BUDGETS: dict[Priority, Budget] = {
    Priority.ALARM: Budget(16 << 20, "reject_new"),
    Priority.EVENT: Budget(32 << 20, "drop_oldest"),
    Priority.TELEMETRY: Budget(256 << 20, "drop_oldest"),
}


@dataclass(frozen=True, slots=True)
class Batch:
    """Readings of one class, in sequence order, for one destination.

    ``scanned_to`` is the last sequence number examined: with a device filter some rows
    are skipped, and the cursor moves past them too once the batch is acknowledged.
    ``readings`` is a sequence of ``StoredReading`` (from memory, one that makes them as
    they are looked at: ``edgeagent.store.numbered``).
    """

    destination: str
    priority: Priority
    readings: Sequence[StoredReading]
    scanned_to: int
    buffer_id: str = ""

    @property
    def first_seq(self) -> int:
        return self.readings[0].seq

    @property
    def last_seq(self) -> int:
        return self.readings[-1].seq


@dataclass(slots=True)
class StoreStats:
    """What the status page shows about the buffer."""

    path: str
    file_bytes: int
    last_seq: int
    pending_commit: int
    committed_total: int
    unsent: dict[str, int]
    oldest_unsent_ts: dict[str, float | None]
    class_bytes: dict[str, int]
    dropped: dict[str, dict[str, int]]
    last_error: str | None
    moved_aside: str | None
    buffer_id: str = ""
    produced_total: int = 0
    salvage: list[dict[str, object]] = field(default_factory=list)
