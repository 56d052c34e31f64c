"""A read-only look at a buffer on disk, from outside the agent that writes it (tests, tools).

A buffer is its SQLite file and its tail: a reading numbered since the blocks were last
written is in the tail only, and it counts as much (a crash keeps it, the next start
commits it under the same number). Opening read-only never checkpoints or removes the
WAL of a running writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeagent.model import StoredReading
from edgeagent.store import blocks
from edgeagent.store.replay import tail_readings
from edgeagent.store.schema import BLOCKS
from edgeagent.store.tail import tail_path


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def readings(path: Path) -> dict[int, StoredReading]:
    """Every reading the buffer holds, by sequence number: its blocks, then its tail."""
    if not path.exists():
        return {}
    out: dict[int, StoredReading] = {}
    with _read_only(path) as conn:
        names = {sid: (d, p, u) for sid, d, p, u in conn.execute("SELECT id, device, point, unit FROM series")}
        boots = conn.execute("SELECT first_seq, boot FROM boots ORDER BY first_seq").fetchall()

        def boot_of(seq: int) -> str:
            found = [b for first, b in boots if first <= seq]
            return found[-1] if found else "unknown"

        for prio, table in BLOCKS.items():
            for (data,) in conn.execute(f"SELECT data FROM {table} ORDER BY first_seq"):
                for r in blocks.decode_block(data, prio, names, boot_of):
                    out[r.seq] = r
    tail = tail_readings(tail_path(path), names)
    if tail is not None:
        for rs in tail.readings.values():
            for r in rs:
                out.setdefault(r.seq, r)
    return out


def last_seq(path: Path) -> int:
    """The highest sequence number the buffer is known to have given."""
    with _read_only(path) as conn:
        names = {sid: (d, p, u) for sid, d, p, u in conn.execute("SELECT id, device, point, unit FROM series")}
        row = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        last = row[0] if row else 0
        for table in BLOCKS.values():
            last = max(last, conn.execute(f"SELECT coalesce(max(last_seq), 0) FROM {table}").fetchone()[0])
    tail = tail_readings(tail_path(path), names)
    return max(last, tail.highest if tail is not None else 0)


def boot_timed(path: Path) -> int:
    """How many of its readings still carry a time relative to a boot (not yet re-timed)."""
    return sum(1 for r in readings(path).values() if r.boot is not None)
