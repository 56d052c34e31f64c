"""What a full class gives up, by its policy, inside the transaction that adds a batch.

Blocks that every destination has acknowledged go first (nothing is lost). Then:
``drop_oldest`` deletes the oldest blocks; ``thin`` rewrites the oldest region keeping
every n-th reading under its own number; ``reject_new`` never gets here (the newest
readings are refused before they are numbered, see ``edgeagent.store.journal``).
Every reading given up that some destination had not acknowledged is counted, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgeagent.model import Priority
from edgeagent.store import blocks
from edgeagent.store.schema import BLOCKS
from edgeagent.store.types import Budget

if TYPE_CHECKING:
    from edgeagent.store.core import _Core

# When a class is full, free this share of its budget beyond what the batch needs, so
# a full class does not give up a little on every single commit.
BUDGET_SLACK = 0.02


@dataclass(slots=True)
class Freed:
    """What ``make_room`` gave up in one class."""

    reason: str = "acknowledged"  # the drop reason of ``dropped``
    dropped: list[int] = field(default_factory=list)  # numbers no destination will now get, sorted
    removed: int = 0  # readings that left the table (dropped and acknowledged)
    bytes: int = 0  # budget bytes given back


def make_room(core: _Core, prio: Priority, budget: Budget, need: int, floor: int) -> Freed:
    """Free at least ``need`` budget bytes of a class; ``floor``: acknowledged by every destination."""
    conn = core._conn()
    table = BLOCKS[prio]
    want = need + int(budget.max_bytes * BUDGET_SLACK)
    freed = Freed()
    oldest = conn.execute(f"SELECT first_seq, last_seq, count, length(data) FROM {table} ORDER BY first_seq").fetchall()
    # Whole blocks every destination has: gone first, nothing lost.
    acked = []
    for first, last, count, size in oldest:
        if last > floor or freed.bytes >= want:
            break
        acked.append(first)
        freed.removed += count
        freed.bytes += blocks.block_cost(size)
    core._delete_blocks(prio, acked)
    rest = oldest[len(acked) :]
    if freed.bytes >= want or not rest or budget.policy == "reject_new":
        return freed
    if budget.policy == "drop_oldest":
        freed.reason = "drop_oldest"
        region = []
        for first, _, count, size in rest:
            if freed.bytes >= want:
                break
            region.append(first)
            freed.removed += count
            freed.bytes += blocks.block_cost(size)
        gone = core._decode_blocks(prio, region)
        core._delete_blocks(prio, region)
        freed.dropped = [r.seq for r in gone if r.seq > floor]
        return freed
    # thin: of the oldest readings keep every n-th; the region is rewritten as one block.
    freed.reason = "thinned"
    n = budget.thin_keep_every
    target = (want - freed.bytes) * n // (n - 1) + 1
    region, region_bytes = [], 0
    for first, _, _, size in rest:
        if region_bytes >= target:
            break
        region.append(first)
        region_bytes += blocks.block_cost(size)
    readings = core._decode_blocks(prio, region)
    survivors = readings[::n]
    keep = {r.seq for r in survivors}
    core._delete_blocks(prio, region)
    added = core._insert_block(prio, survivors) if survivors else 0
    freed.removed += len(readings) - len(survivors)
    freed.bytes += region_bytes - added
    freed.dropped = [r.seq for r in readings if r.seq not in keep and r.seq > floor]
    return freed
