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
- A file that fails its integrity check is moved aside (never deleted) and a fresh
  store is opened; the agent raises an alarm about it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edgeagent.aio import wait_event
from edgeagent.errors import StoreError, StoreFull
from edgeagent.model import Priority, Quality, Reading, StoredReading

if TYPE_CHECKING:
    import sqlite_utils

log = logging.getLogger(__name__)

T = TypeVar("T")

TABLES: dict[Priority, str] = {
    Priority.ALARM: "readings_alarm",
    Priority.EVENT: "readings_event",
    Priority.TELEMETRY: "readings_telemetry",
}
SCHEMA_VERSION = 1
PRUNE_CHUNK_ROWS = 20_000
PRUNE_EVERY_S = 2.0
CLOSE_WAIT_S = 5.0
WAL_LIMIT_BYTES = 8 * 1024 * 1024
PAGE_BYTES = 4096


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
    """

    destination: str
    priority: Priority
    readings: list[StoredReading]
    scanned_to: int

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


MAX_DECIMALS = 6
_DECIMAL_SHIFT = 2  # flags = quality | decimals << 2 (quality uses two bits)
_EXACT_INT_LIMIT = 2**47


def encode_value(value: float | None) -> tuple[int | float | None, int]:
    """(stored value, decimals): the smallest exact decimal integer form, else the float."""
    if value is None:
        return None, 0
    for decimals in range(MAX_DECIMALS + 1):
        scaled = value * 10**decimals
        mantissa = round(scaled)
        if abs(mantissa) >= _EXACT_INT_LIMIT:
            break
        if mantissa / 10**decimals == value:
            return mantissa, decimals
    return float(value), 0


def decode_value(stored: int | float | None, flags: int) -> float | None:
    if stored is None:
        return None
    decimals = flags >> _DECIMAL_SHIFT
    return stored / 10**decimals if decimals else float(stored)


def _migrate_v1(db: sqlite_utils.Database) -> None:
    """Step 1: the per-class reading tables, series, meta and cursors."""
    for table in TABLES.values():
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, series INTEGER NOT NULL, "
            "value ANY, flags INTEGER NOT NULL) STRICT"
        )
    db["series"].create(  # type: ignore[union-attr]
        {"id": int, "device": str, "point": str, "unit": str},
        pk="id",
        not_null={"device", "point", "unit"},
        strict=True,
        if_not_exists=True,
    )
    db["meta"].create({"key": str, "value": int}, pk="key", strict=True, if_not_exists=True)  # type: ignore[union-attr]
    db["cursors"].create(  # type: ignore[union-attr]
        {"destination": str, "priority": int, "seq": int},
        pk=("destination", "priority"),
        strict=True,
        if_not_exists=True,
    )
    db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('last_seq', 0)")


MIGRATIONS = [_migrate_v1]


# Estimated bytes a row takes in its table: the cell (pointer, sizes, header, ts, series)
# plus the variable parts, times a factor for page headers, fill and interior pages.
ROW_FIXED_BYTES = 16
PAGE_FACTOR = 1.08
DEFAULT_ROW_BYTES = 30.0
# When a class is full, free this share of its budget beyond what the batch needs, so
# a full class does not delete a few rows on every single commit.
BUDGET_SLACK = 0.02


def _int_bytes(v: int) -> int:
    """Bytes SQLite (record format 4) takes for an integer column value."""
    a = -v - 1 if v < 0 else v
    if v in (0, 1):
        return 0
    if a < 1 << 7:
        return 1
    if a < 1 << 15:
        return 2
    if a < 1 << 23:
        return 3
    if a < 1 << 31:
        return 4
    return 6 if a < 1 << 47 else 8


def _row_bytes(seq: int, stored: int | float | None, flags: int) -> int:
    cost = ROW_FIXED_BYTES + (1 if seq < 1 << 7 else 2 if seq < 1 << 14 else 3 if seq < 1 << 21 else 4)
    if stored is not None:
        cost += 8 if type(stored) is float else _int_bytes(stored)  # type: ignore[arg-type]
    return cost + (1 if flags > 1 else 0)


class _Core:
    """The synchronous store; every method runs on the store's single thread."""

    def __init__(
        self,
        path: Path,
        destinations: Mapping[str, DestinationFilter],
        budgets: Mapping[Priority, Budget] | None = None,
    ) -> None:
        self.path = path
        self.filters = dict(destinations)
        self.destinations = list(destinations)
        self.budgets = dict(budgets or DEFAULT_BUDGETS)
        self.conn: sqlite3.Connection | None = None
        self.series: dict[tuple[str, str, str], int] = {}
        self.series_by_id: dict[int, tuple[str, str, str]] = {}
        self.last_seq = 0
        self.cursors: dict[tuple[str, Priority], int] = {}
        self.unsent: dict[tuple[str, Priority], int] = {}
        self.rows: dict[Priority, int] = dict.fromkeys(TABLES, 0)
        self.bytes: dict[Priority, float] = dict.fromkeys(TABLES, 0.0)
        self.dropped: dict[str, dict[str, int]] = {}
        # Highest sequence number a policy has deleted, per class: a batch held for a retry
        # that reaches back to it holds readings that no longer exist and must be re-read.
        self.dropped_upto: dict[Priority, int] = dict.fromkeys(TABLES, 0)
        self.moved_aside: str | None = None

    # -- opening -------------------------------------------------------------------

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open_checked()
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            self.moved_aside = self._move_aside(str(exc))
            self._open_checked()

    def _open_checked(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn = conn
        conn.execute("PRAGMA busy_timeout = 5000")
        # Check before anything writes, so a damaged file is moved aside exactly as found.
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {result}")
        # A new file gets incremental auto-vacuum, so free pages can be given back
        # in small steps instead of by a full VACUUM.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.DatabaseError(f"cannot enable WAL (journal_mode={mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Keep the WAL small next to the budgets (a small budget must mean a small footprint).
        total = sum(b.max_bytes for b in self.budgets.values())
        wal_pages = max(64, min(1000, total // PAGE_BYTES // 16))
        conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
        conn.execute(f"PRAGMA journal_size_limit = {min(WAL_LIMIT_BYTES, wal_pages * PAGE_BYTES * 2)}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < len(MIGRATIONS):
            # Imported only when the schema changes: it costs ~4 MB of RSS for the life of
            # the process, and a gateway restarted on an existing buffer never needs it.
            import sqlite_utils

            db = sqlite_utils.Database(conn)
            for step, migrate in enumerate(MIGRATIONS[version:], start=version + 1):
                with db.atomic():
                    migrate(db)
                    conn.execute(f"PRAGMA user_version = {step}")
        self._load_state()

    def _move_aside(self, reason: str) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        log.error("store %s is unreadable (%s); moving it aside to %s", self.path, reason, target)
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(Path(f"{target}{suffix}"))
        return str(target)

    def _load_state(self) -> None:
        conn = self._conn()
        for sid, device, point, unit in conn.execute("SELECT id, device, point, unit FROM series"):
            self.series[(device, point, unit)] = sid
            self.series_by_id[sid] = (device, point, unit)
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        # meta holds the counter as of the last deletion; the tables hold anything newer.
        last = meta.get("last_seq", 0)
        for prio, table in TABLES.items():
            top, count = conn.execute(f"SELECT max(seq), count(*) FROM {table}").fetchone()
            last = max(last, top or 0)
            self.rows[prio] = count
            per_row = meta.get(f"row_millibytes:{prio.name.lower()}", DEFAULT_ROW_BYTES * 1000) / 1000
            self.bytes[prio] = count * per_row
        self.last_seq = last
        for key, value in meta.items():
            if key.startswith("dropped:"):
                _, cls, reason = key.split(":", 2)
                self.dropped.setdefault(cls, {})[reason] = value
        stored = {(d, Priority(p)): s for d, p, s in conn.execute("SELECT destination, priority, seq FROM cursors")}
        for dest, filt in self.filters.items():
            for prio, table in TABLES.items():
                # A new destination starts from what is still buffered.
                cursor = stored.get((dest, prio), 0)
                self.cursors[(dest, prio)] = cursor
                self.unsent[(dest, prio)] = (
                    conn.execute(f"SELECT count(*) FROM {table} WHERE seq > ?", (cursor,)).fetchone()[0]
                    if prio in filt.classes
                    else 0
                )

    def _conn(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StoreError("store is not open")
        return self.conn

    # -- writing -------------------------------------------------------------------

    def _reject_over_budget(self, readings: Sequence[Reading]) -> tuple[list[Reading], dict[Priority, int]]:
        """Drop the newest readings of full ``reject_new`` classes before numbering."""
        rejected: dict[Priority, int] = {}
        for prio, budget in self.budgets.items():
            if budget.policy != "reject_new":
                continue
            incoming = sum(1 for r in readings if r.priority == prio)
            if not incoming:
                continue
            per_row = self._per_row(prio)
            room = max(0, int((budget.max_bytes - self.bytes[prio]) / per_row))
            if incoming > room:
                rejected[prio] = incoming - room
        if not rejected:
            return list(readings), rejected
        keep_left = {p: sum(1 for r in readings if r.priority == p) - n for p, n in rejected.items()}
        kept = []
        for r in readings:
            left = keep_left.get(r.priority)
            if left is None:
                kept.append(r)
            elif left > 0:
                kept.append(r)
                keep_left[r.priority] = left - 1
        return kept, rejected

    def _per_row(self, prio: Priority) -> float:
        rows = self.rows[prio]
        return self.bytes[prio] / rows if rows else DEFAULT_ROW_BYTES * PAGE_FACTOR

    def commit(self, readings: Sequence[Reading]) -> int:
        """Commit readings in one transaction; return the last sequence number given.

        Full classes are handled here, inside the same transaction, so the buffer never
        exceeds its budgets by more than this one batch.
        """
        conn = self._conn()
        kept, rejected = self._reject_over_budget(readings)
        new_series: dict[tuple[str, str, str], int] = {}
        rows: dict[Priority, list[tuple[int, int, int, int | float | None, int]]] = {p: [] for p in TABLES}
        cost: dict[Priority, float] = dict.fromkeys(TABLES, 0.0)
        seq = self.last_seq
        next_sid = max(self.series_by_id, default=0) + 1
        series = self.series
        for r in kept:
            key = (r.device, r.point, r.unit)
            sid = series.get(key) or new_series.get(key)
            if sid is None:
                sid = new_series[key] = next_sid
                next_sid += 1
            seq += 1
            stored, decimals = encode_value(r.value)
            flags = r.quality | decimals << _DECIMAL_SHIFT
            rows[r.priority].append((seq, round(r.ts * 1000), sid, stored, flags))
            cost[r.priority] += _row_bytes(seq, stored, flags)
        has_alarm = bool(rows[Priority.ALARM])
        freed: dict[Priority, tuple[str, list[int], int]] = {}
        try:
            if has_alarm:
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for prio, budget in self.budgets.items():
                    need = self.bytes[prio] + cost[prio] * PAGE_FACTOR - budget.max_bytes
                    if need > 0 and budget.policy != "reject_new" and self.rows[prio]:
                        freed[prio] = self._make_room(prio, budget, need)
                if new_series:
                    conn.executemany(
                        "INSERT INTO series(id, device, point, unit) VALUES (?, ?, ?, ?)",
                        [(sid, *key) for key, sid in new_series.items()],
                    )
                for prio, batch in rows.items():
                    if batch:
                        conn.executemany(
                            f"INSERT INTO {TABLES[prio]}(seq, ts_ms, series, value, flags) VALUES (?, ?, ?, ?, ?)",
                            batch,
                        )
                drops = [(p, "rejected_full", n) for p, n in rejected.items()]
                drops += [(p, reason, len(seqs)) for p, (reason, seqs, _) in freed.items() if seqs]
                for prio, reason, n in drops:
                    conn.execute(
                        "INSERT INTO meta(key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                        (f"dropped:{prio.name.lower()}:{reason}", n),
                    )
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (it does on a full disk).
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise _translate(exc) from exc
        finally:
            if has_alarm:
                conn.execute("PRAGMA synchronous = NORMAL")
        # The transaction is durable: now update what is kept in memory.
        for key, sid in new_series.items():
            series[key] = sid
            self.series_by_id[sid] = key
        self.last_seq = seq
        for prio, (reason, seqs, removed_rows) in freed.items():
            per_row = self._per_row(prio)
            self.rows[prio] -= removed_rows
            self.bytes[prio] = max(0.0, self.bytes[prio] - removed_rows * per_row)
            self._forget_unsent(prio, seqs)
            if seqs:
                self._count_drop(prio, reason, len(seqs))
                self.dropped_upto[prio] = max(self.dropped_upto[prio], seqs[-1])
        for prio, n in rejected.items():
            self._count_drop(prio, "rejected_full", n)
        for prio, batch in rows.items():
            self.rows[prio] += len(batch)
            self.bytes[prio] += cost[prio] * PAGE_FACTOR
        for (dest, prio), _ in list(self.unsent.items()):
            if prio in self.filters[dest].classes:
                self.unsent[(dest, prio)] += len(rows[prio])
        return seq

    def _make_room(self, prio: Priority, budget: Budget, need: float) -> tuple[str, list[int], int]:
        """Free at least ``need`` bytes of a full class, by its policy.

        Returns (drop reason, the dropped sequence numbers, rows removed from the table).
        Acknowledged rows go first (nothing is lost); then the policy decides.
        """
        conn = self._conn()
        table = TABLES[prio]
        per_row = self._per_row(prio)
        want = int(need / per_row) + 1 + int(budget.max_bytes * BUDGET_SLACK / per_row)
        floor = self._ack_floor(prio)
        acked = [
            s
            for (s,) in conn.execute(
                f"DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} WHERE seq <= ? ORDER BY seq LIMIT ?) "
                "RETURNING seq",
                (floor, want),
            )
        ]
        want -= len(acked)
        if want <= 0:
            return "acknowledged", [], len(acked)
        if budget.policy == "drop_oldest":
            dropped = [
                s
                for (s,) in conn.execute(
                    f"DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} ORDER BY seq LIMIT ?) RETURNING seq",
                    (want,),
                )
            ]
            return "drop_oldest", sorted(dropped), len(acked) + len(dropped)
        # thin: of the oldest readings, keep every n-th. The region is rewritten (deleted and
        # the survivors inserted again under their own numbers) so its pages stay dense.
        n = budget.thin_keep_every
        region_rows = want * n // (n - 1) + 1
        region = conn.execute(
            f"SELECT seq, ts_ms, series, value, flags FROM {table} ORDER BY seq LIMIT ?", (region_rows,)
        ).fetchall()
        if not region:
            return "thinned", [], len(acked)
        survivors = region[::n]
        keep = {row[0] for row in survivors}
        conn.execute(f"DELETE FROM {table} WHERE seq <= ?", (region[-1][0],))
        conn.executemany(f"INSERT INTO {table}(seq, ts_ms, series, value, flags) VALUES (?, ?, ?, ?, ?)", survivors)
        dropped = [row[0] for row in region if row[0] not in keep]
        return "thinned", dropped, len(acked) + len(dropped)

    def _ack_floor(self, prio: Priority) -> int:
        """Highest seq of a class that every destination sending that class has acknowledged."""
        cursors = [self.cursors[(d, prio)] for d, f in self.filters.items() if prio in f.classes]
        if not cursors:
            return self.last_seq if self.filters else 0
        return min(cursors)

    def _forget_unsent(self, prio: Priority, dropped: list[int]) -> None:
        for dest, filt in self.filters.items():
            if prio in filt.classes:
                cursor = self.cursors[(dest, prio)]
                gone = len(dropped) - bisect.bisect_right(dropped, cursor)
                self.unsent[(dest, prio)] = max(0, self.unsent[(dest, prio)] - gone)

    def _count_drop(self, prio: Priority, reason: str, n: int) -> None:
        per = self.dropped.setdefault(prio.name.lower(), {})
        per[reason] = per.get(reason, 0) + n

    # -- reading for sync ----------------------------------------------------------

    def read_batch(self, destination: str, limit: int) -> Batch | None:
        """The next batch for a destination: alarms first, then events, then telemetry."""
        conn = self._conn()
        filt = self.filters[destination]
        for prio, table in TABLES.items():
            if prio not in filt.classes:
                continue
            cursor = self.cursors[(destination, prio)]
            rows = conn.execute(
                f"SELECT seq, ts_ms, series, value, flags FROM {table} WHERE seq > ? ORDER BY seq LIMIT ?",
                (cursor, limit),
            ).fetchall()
            if not rows:
                continue
            scanned_to = rows[-1][0]
            if filt.devices is not None:
                devices, by_id = filt.devices, self.series_by_id
                rows = [r for r in rows if by_id[r[2]][0] in devices]
            return Batch(destination, prio, [self._stored(prio, *r) for r in rows], scanned_to=scanned_to)
        return None

    def _stored(
        self, prio: Priority, seq: int, ts_ms: int, sid: int, stored: int | float | None, flags: int
    ) -> StoredReading:
        device, point, unit = self.series_by_id[sid]
        quality = Quality(flags & ((1 << _DECIMAL_SHIFT) - 1))
        return StoredReading(seq, device, point, ts_ms / 1000, decode_value(stored, flags), unit, quality, prio)

    def ack(self, destination: str, priority: Priority, scanned_to: int, count: int) -> None:
        """Advance a destination's cursor past an acknowledged (or wholly filtered) batch."""
        conn = self._conn()
        key = (destination, priority)
        if scanned_to <= self.cursors[key]:
            return
        try:
            conn.execute(
                "INSERT INTO cursors(destination, priority, seq) VALUES (?, ?, ?) "
                "ON CONFLICT(destination, priority) DO UPDATE SET seq = excluded.seq",
                (destination, int(priority), scanned_to),
            )
        except sqlite3.OperationalError as exc:
            raise _translate(exc) from exc
        self.cursors[key] = scanned_to
        self.unsent[key] = max(0, self.unsent[key] - count)

    def prune(self) -> int:
        """Delete rows every destination has acknowledged; return how many."""
        if not self.filters:
            return 0
        conn = self._conn()
        deleted = 0
        # Persist the counter first, so deleting the newest rows can never let a
        # sequence number be handed out again.
        conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq' AND value < ?", (self.last_seq, self.last_seq))
        for prio, table in TABLES.items():
            floor = self._ack_floor(prio)
            per_row = self._per_row(prio)
            while True:
                cur = conn.execute(
                    f"DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} WHERE seq <= ? ORDER BY seq LIMIT ?)",
                    (floor, PRUNE_CHUNK_ROWS),
                )
                n = cur.rowcount
                deleted += n
                self.rows[prio] -= n
                self.bytes[prio] = max(0.0, self.bytes[prio] - n * per_row)
                if n < PRUNE_CHUNK_ROWS:
                    break
        return deleted

    # -- status --------------------------------------------------------------------

    def oldest_unsent(self, destination: str) -> float | None:
        conn = self._conn()
        oldest: float | None = None
        for prio, table in TABLES.items():
            if prio not in self.filters[destination].classes:
                continue
            row = conn.execute(
                f"SELECT ts_ms FROM {table} WHERE seq > ? ORDER BY seq LIMIT 1",
                (self.cursors[(destination, prio)],),
            ).fetchone()
            if row is not None and (oldest is None or row[0] / 1000 < oldest):
                oldest = row[0] / 1000
        return oldest

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += Path(f"{self.path}{suffix}").stat().st_size
        return total

    def all_readings(self) -> list[StoredReading]:
        """Every buffered reading in sequence order (for tests and the CLI)."""
        conn = self._conn()
        out = []
        for prio, table in TABLES.items():
            for row in conn.execute(f"SELECT seq, ts_ms, series, value, flags FROM {table}"):
                out.append(self._stored(prio, *row))
        out.sort(key=lambda r: r.seq)
        return out

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                for prio in TABLES:
                    if self.rows[prio]:
                        self.conn.execute(
                            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                            (f"row_millibytes:{prio.name.lower()}", int(self._per_row(prio) * 1000)),
                        )
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._close_quietly()

    def _close_quietly(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None


def _translate(exc: sqlite3.OperationalError) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return StoreFull(f"disk full: {exc}")
    return StoreError(f"store write failed: {exc}")


@dataclass(slots=True)
class _Counters:
    committed_total: int = 0
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
    ) -> None:
        self.path = path
        filters = (
            dict(destinations)
            if isinstance(destinations, Mapping)
            else {name: DestinationFilter() for name in destinations}
        )
        self.destinations = list(filters)
        self.commit_interval_s = commit_interval_ms / 1000
        self.commit_max_readings = commit_max_readings
        self.max_pending_readings = max_pending_readings
        self._core = _Core(path, filters, budgets)
        self._acked_since_prune = False
        self._last_prune = 0.0
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

    def debug_hang(self) -> None:
        """Make the commit loop hang for real (a test of the watchdog); see the agent."""
        self._hang = True

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise StoreError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        try:
            await self._run(self._core.open)
        except (sqlite3.Error, OSError) as exc:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._task = asyncio.create_task(self._commit_loop(), name="store-commit")

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
        self._executor.shutdown(wait=True)
        self._executor = None

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def moved_aside(self) -> str | None:
        """Where a corrupt store file was moved at start, if one was."""
        return self._core.moved_aside

    @property
    def last_seq(self) -> int:
        return self._core.last_seq

    def append(self, reading: Reading) -> None:
        """Queue a reading for the next commit. Never blocks and never raises."""
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
                await self.flush()
                if self._acked_since_prune and time.monotonic() - self._last_prune >= PRUNE_EVERY_S:
                    self._acked_since_prune = False
                    self._last_prune = time.monotonic()
                    await self.prune()
            except StoreError as exc:
                # Keep the readings pending, count nothing lost yet, and try again.
                if self._counters.last_error != str(exc):
                    log.error("%s; readings stay in memory and are retried", exc)
                self._counters.last_error = str(exc)
            if self._beat is not None:
                self._beat()

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

    def still_whole(self, batch: Batch) -> bool:
        """False when a budget policy has since deleted readings this batch reaches back to."""
        return batch.first_seq > self._core.dropped_upto[batch.priority]

    async def next_batch(self, destination: str, limit: int) -> Batch | None:
        return await self._run(self._core.read_batch, destination, limit)

    async def ack(self, batch: Batch) -> None:
        await self._run(self._core.ack, batch.destination, batch.priority, batch.scanned_to, len(batch.readings))
        self._acked_since_prune = True

    async def prune(self) -> int:
        try:
            return int(await self._run(self._core.prune))
        except sqlite3.OperationalError as exc:
            raise _translate(exc) from exc

    async def all_readings(self) -> list[StoredReading]:
        return await self._run(self._core.all_readings)

    async def stats(self) -> StoreStats:
        core = self._core
        oldest = {d: await self._run(core.oldest_unsent, d) for d in self.destinations}
        return StoreStats(
            path=str(self.path),
            file_bytes=await self._run(core.file_bytes),
            last_seq=core.last_seq,
            pending_commit=len(self._pending),
            committed_total=self._counters.committed_total,
            unsent={d: sum(core.unsent[(d, p)] for p in TABLES) for d in self.destinations},
            oldest_unsent_ts=oldest,
            class_bytes={p.name.lower(): int(core.bytes[p]) for p in TABLES},
            dropped=_merge_counts(core.dropped, self._counters.dropped),
            last_error=self._counters.last_error,
            moved_aside=core.moved_aside,
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
