"""The blocks of a buffer file, read and rewritten: a mixin of ``edgeagent.store.core._Core``.

Decoding a block costs far more than reading it, and a destination catching up reads
the same block for several batches, so the last block decoded per class is kept.
"""

from __future__ import annotations

import bisect
import contextlib
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import replace
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING

from edgeagent.errors import StoreCorrupt, StoreError, StoreFull
from edgeagent.model import Priority, StoredReading
from edgeagent.store import blocks
from edgeagent.store.schema import BLOCKS
from edgeagent.store.tail import tail_path
from edgeagent.store.types import Batch, DestinationFilter

_SEQ = attrgetter("seq")
CursorItems = Sequence[tuple[str, Priority, int]]


class _Blocks:
    """Reading, writing and pruning blocks; every method runs on the store's thread."""

    if TYPE_CHECKING:
        path: Path
        buffer_id: str
        filters: dict[str, DestinationFilter]
        series: dict[tuple[str, str, str], int]
        series_by_id: dict[int, tuple[str, str, str]]
        boots: list[tuple[int, str]]
        cursors: dict[tuple[str, Priority], int]
        rows: dict[Priority, int]
        bytes: dict[Priority, int]
        top: dict[Priority, int]
        _cache: dict[Priority, tuple[int, list[StoredReading]]]

        def _conn(self) -> sqlite3.Connection: ...
        def _ack_floor(self, prio: Priority) -> int: ...
        def _write_cursors(self, items: CursorItems) -> None: ...

    def _boot_of(self, seq: int) -> str:
        i = bisect.bisect_right(self.boots, (seq, "\uffff")) - 1
        return self.boots[i][1] if i >= 0 else "unknown"

    def _decoded(self, prio: Priority, first: int, data: bytes | None = None) -> list[StoredReading]:
        cached = self._cache.get(prio)
        if cached is not None and cached[0] == first:
            return cached[1]
        if data is None:
            row = self._conn().execute(f"SELECT data FROM {BLOCKS[prio]} WHERE first_seq = ?", (first,)).fetchone()
            data = row[0] if row else b""
        try:
            readings = blocks.decode_block(data, prio, self.series_by_id, self._boot_of)
        except blocks.BlockError as exc:
            raise StoreCorrupt(f"the buffer is damaged: block {first} of {prio.name.lower()}: {exc}") from exc
        self._cache[prio] = (first, readings)
        return readings

    def _decode_blocks(self, prio: Priority, firsts: Iterable[int]) -> list[StoredReading]:
        out: list[StoredReading] = []
        for first in firsts:
            out.extend(self._decoded(prio, first))
        return out

    def _delete_blocks(self, prio: Priority, firsts: Sequence[int]) -> None:
        if not firsts:
            return
        self._cache.pop(prio, None)
        table = BLOCKS[prio]
        conn = self._conn()
        for first in firsts:
            count, size = conn.execute(
                f"DELETE FROM {table} WHERE first_seq = ? RETURNING count, length(data)", (first,)
            ).fetchone()
            self.rows[prio] -= count
            self.bytes[prio] -= blocks.block_cost(size)

    def _insert_block(self, prio: Priority, readings: Sequence[StoredReading], blob: bytes | None = None) -> int:
        """Write one block of a class's readings (in sequence order); return its budget bytes."""
        if blob is None:
            blob = blocks.compress([blocks.encode_segment(readings, self.series)])
        boot_timed = sum(1 for r in readings if r.boot is not None)
        self._conn().execute(
            f"INSERT INTO {BLOCKS[prio]}(first_seq, last_seq, count, boot_timed, data) VALUES (?, ?, ?, ?, ?)",
            (readings[0].seq, readings[-1].seq, len(readings), boot_timed, blob),
        )
        cost = blocks.block_cost(len(blob))
        self.rows[prio] += len(readings)
        self.bytes[prio] += cost
        self.top[prio] = max(self.top[prio], readings[-1].seq)
        self._cache.pop(prio, None)
        return cost

    def _after(self, prio: Priority, cursor: int, limit: int) -> list[StoredReading]:
        """Up to ``limit`` readings of a class numbered above ``cursor``, in order."""
        table = BLOCKS[prio]
        spans = self._conn().execute(
            f"SELECT first_seq, last_seq FROM {table} WHERE first_seq >= "
            f"coalesce((SELECT max(first_seq) FROM {table} WHERE first_seq <= ?), 0) ORDER BY first_seq",
            (cursor,),
        )
        out: list[StoredReading] = []
        for first, last in spans:
            if last <= cursor:
                continue
            readings = self._decoded(prio, first)
            start = bisect.bisect_right(readings, cursor, key=_SEQ)
            out.extend(readings[start : start + limit - len(out)])
            if len(out) >= limit:
                break
        spans.close()
        return out

    def _count_after(self, prio: Priority, cursor: int) -> int:
        conn = self._conn()
        table = BLOCKS[prio]
        whole = conn.execute(f"SELECT coalesce(sum(count), 0) FROM {table} WHERE first_seq > ?", (cursor,)).fetchone()
        part = conn.execute(
            f"SELECT first_seq, last_seq FROM {table} WHERE first_seq <= ? ORDER BY first_seq DESC LIMIT 1", (cursor,)
        ).fetchone()
        n = int(whole[0])
        if part is not None and part[1] > cursor:
            readings = self._decoded(prio, part[0])
            n += len(readings) - bisect.bisect_right(readings, cursor, key=_SEQ)
        return n

    def read_batch(self, destination: str, limit: int) -> Batch | None:
        """The next batch of a salvage buffer: alarms first, then events, then telemetry."""
        for prio in BLOCKS:
            if prio in self.filters[destination].classes:
                batch = self.read_class(destination, prio, limit)
                if batch is not None:
                    return batch
        return None

    def read_class(self, destination: str, prio: Priority, limit: int, cursor: int | None = None) -> Batch | None:
        """The next batch of one class from the blocks, above the destination's cursor."""
        filt = self.filters[destination]
        cursor = self.cursors[(destination, prio)] if cursor is None else cursor
        if cursor >= self.top[prio]:
            return None
        readings = self._after(prio, cursor, limit)
        if not readings:
            return None
        return make_batch(destination, prio, readings, filt, self.buffer_id)

    def retime(self, offset_s: float, boot_from: int) -> int:
        """Give this boot's boot-relative readings in blocks their wall time (the clock is set)."""
        conn = self._conn()
        offset_ms = round(offset_s * 1000)
        n = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            for prio, table in BLOCKS.items():
                timed = conn.execute(
                    f"SELECT first_seq FROM {table} WHERE boot_timed > 0 AND last_seq >= ?", (boot_from,)
                ).fetchall()
                for (first,) in timed:
                    old = self._decoded(prio, first)
                    new = [
                        replace(r, ts=(round(r.ts * 1000) + offset_ms) / 1000, boot=None)
                        if r.boot is not None and r.seq >= boot_from
                        else r
                        for r in old
                    ]
                    n += sum(1 for a, b in zip(old, new, strict=True) if a is not b)
                    self._delete_blocks(prio, [first])
                    self._insert_block(prio, new)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._cache.clear()
            raise _translate(exc) from exc
        return n

    def checkpoint(self) -> None:
        """Fold the WAL into the main file and cut it to nothing: space runs low."""
        with contextlib.suppress(sqlite3.Error):
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def prune(self, last_seq: int, cursors: CursorItems = ()) -> int:
        """Delete readings every destination has acknowledged; return how many.

        Whole blocks go; the block a floor falls inside is written again without its
        acknowledged part. ``last_seq`` (the counter) and ``cursors`` are written in the same
        transaction, so no deleted number can ever be handed out again.
        """
        if not self.filters:
            return 0
        conn = self._conn()
        oldest = {p: conn.execute(f"SELECT min(first_seq) FROM {t}").fetchone()[0] for p, t in BLOCKS.items()}
        if all(first is None or first > self._ack_floor(p) for p, first in oldest.items()):
            return 0  # nothing acknowledged in the file: nothing written either
        deleted = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('last_seq', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                (last_seq,),
            )
            self._write_cursors(cursors)
            for prio, table in BLOCKS.items():
                floor = self._ack_floor(prio)
                spans = conn.execute(
                    f"SELECT first_seq, last_seq, count FROM {table} WHERE first_seq <= ? ORDER BY first_seq", (floor,)
                ).fetchall()
                whole = [first for first, last, _ in spans if last <= floor]
                deleted += sum(count for _, last, count in spans if last <= floor)
                self._delete_blocks(prio, whole)
                if spans and spans[-1][1] > floor:
                    readings = self._decoded(prio, spans[-1][0])
                    keep = readings[bisect.bisect_right(readings, floor, key=_SEQ) :]
                    deleted += len(readings) - len(keep)
                    self._delete_blocks(prio, [spans[-1][0]])
                    self._insert_block(prio, keep)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._reload_sizes()
            raise _translate(exc) from exc
        return deleted

    def _reload_sizes(self) -> None:
        self._cache.clear()
        for prio, table in BLOCKS.items():
            rows = self._conn().execute(f"SELECT last_seq, count, length(data) FROM {table}").fetchall()
            self.rows[prio] = sum(r[1] for r in rows)
            self.bytes[prio] = sum(blocks.block_cost(r[2]) for r in rows)
            self.top[prio] = max((r[0] for r in rows), default=0)

    # -- status --------------------------------------------------------------------

    def first_after(self, prio: Priority, cursor: int) -> StoredReading | None:
        readings = self._after(prio, cursor, 1)
        return readings[0] if readings else None

    def file_bytes(self) -> int:
        total = 0
        for name in (str(self.path), f"{self.path}-wal", str(tail_path(self.path))):
            with contextlib.suppress(OSError):
                total += Path(name).stat().st_size
        return total

    def all_readings(self) -> list[StoredReading]:
        """Every reading in the blocks, in sequence order (for tests and the CLI)."""
        conn = self._conn()
        out: list[StoredReading] = []
        for prio, table in BLOCKS.items():
            for (first,) in conn.execute(f"SELECT first_seq FROM {table} ORDER BY first_seq").fetchall():
                out.extend(self._decoded(prio, first))
        out.sort(key=_SEQ)
        return out


def make_batch(
    destination: str, prio: Priority, readings: list[StoredReading], filt: DestinationFilter, buffer_id: str
) -> Batch:
    """A batch of a class's readings: wall-clock times or boot-relative ones, never both (a
    SenML pack's base time cannot speak for a record that has no time); the device filter
    applied, the cursor moving past what it left out."""
    boot_timed = readings[0].boot is not None
    for i, r in enumerate(readings):
        if (r.boot is not None) != boot_timed:
            readings = readings[:i]
            break
    scanned_to = readings[-1].seq
    if filt.devices is not None:
        devices = filt.devices
        readings = [r for r in readings if r.device in devices]
    return Batch(destination, prio, readings, scanned_to=scanned_to, buffer_id=buffer_id)


def _translate(exc: sqlite3.Error) -> StoreError:
    """The project's error for a SQLite one: nothing above the store sees sqlite3."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return StoreFull(f"disk full: {exc}")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in str(exc):
        return StoreCorrupt(f"the buffer is damaged: {exc}")
    return StoreError(f"store access failed: {exc}")
