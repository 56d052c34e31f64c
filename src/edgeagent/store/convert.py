"""Rows of the previous format (one per reading) as blocks: the upgrade in place.

Schema step 3 calls this inside its transaction. Each row keeps its number, time,
series, flags and value exactly: a scaled integer stays the same integer and decimal
count, a text keeps its reason, a boot-relative time stays one (its boot is in the
``boots`` table, which is kept), so the backlog goes upstream as the old agent would
have sent it, under the same buffer identity.
"""

from __future__ import annotations

import sqlite3

from edgeagent.model import Priority, Quality, StoredReading
from edgeagent.store import blocks
from edgeagent.store.codec import BOOT_TIME_FLAG, QUALITY_MASK, TEXT_FLAG, decode_text, decode_value

_PLACEHOLDER_BOOT = "-"  # only whether a reading is boot-relative is written; its boot is in ``boots``


def rows_to_blocks(conn: sqlite3.Connection, prio: Priority, table: str, target: str, per_block: int) -> int:
    """Copy every row of an old reading table into blocks of ``target``; return how many."""
    names = {sid: (d, p, u) for sid, d, p, u in conn.execute("SELECT id, device, point, unit FROM series")}
    sids = {v: k for k, v in names.items()}
    rows = conn.execute(f"SELECT seq, ts_ms, series, value, flags FROM {table} ORDER BY seq")
    total = 0
    while chunk := rows.fetchmany(per_block):
        readings = [convert_row(prio, names, *row) for row in chunk]
        blob = blocks.compress([blocks.encode_segment(readings, sids)])
        conn.execute(
            f"INSERT INTO {target}(first_seq, last_seq, count, boot_timed, data) VALUES (?, ?, ?, ?, ?)",
            (readings[0].seq, readings[-1].seq, len(readings), sum(r.boot is not None for r in readings), blob),
        )
        total += len(readings)
    return total


def convert_row(
    prio: Priority,
    names: dict[int, tuple[str, str, str]],
    seq: int,
    ts_ms: int,
    sid: int,
    value: int | float | str | None,
    flags: int,
) -> StoredReading:
    device, point, unit = names[sid]
    quality = Quality(flags & QUALITY_MASK)
    boot = _PLACEHOLDER_BOOT if flags & BOOT_TIME_FLAG else None
    if flags & TEXT_FLAG:
        text, reason = decode_text(str(value))
        return StoredReading(seq, device, point, ts_ms / 1000, text, unit, quality, prio, boot, reason)
    return StoredReading(seq, device, point, ts_ms / 1000, decode_value(value, flags), unit, quality, prio, boot)
