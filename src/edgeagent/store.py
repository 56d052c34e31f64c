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
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from edgeagent.errors import StoreError, StoreFull
from edgeagent.model import Priority, Quality, Reading, StoredReading

log = logging.getLogger(__name__)

T = TypeVar("T")

TABLES: dict[Priority, str] = {
    Priority.ALARM: "readings_alarm",
    Priority.EVENT: "readings_event",
    Priority.TELEMETRY: "readings_telemetry",
}
SCHEMA_VERSION = 1
PRUNE_CHUNK_ROWS = 20_000
WAL_LIMIT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Batch:
    """Readings of one class, in sequence order, for one destination."""

    destination: str
    priority: Priority
    readings: list[StoredReading]

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


class _Core:
    """The synchronous store; every method runs on the store's single thread."""

    def __init__(self, path: Path, destinations: Sequence[str]) -> None:
        self.path = path
        self.destinations = list(destinations)
        self.conn: sqlite3.Connection | None = None
        self.series: dict[tuple[str, str, str], int] = {}
        self.series_by_id: dict[int, tuple[str, str, str]] = {}
        self.last_seq = 0
        self.cursors: dict[tuple[str, Priority], int] = {}
        self.unsent: dict[tuple[str, Priority], int] = {}
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
        conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
        db = sqlite_utils.Database(conn)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
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
        # meta holds the counter as of the last deletion; the tables hold anything newer.
        last = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0]
        for table in TABLES.values():
            top = conn.execute(f"SELECT max(seq) FROM {table}").fetchone()[0]
            last = max(last, top or 0)
        self.last_seq = last
        stored = {(d, Priority(p)): s for d, p, s in conn.execute("SELECT destination, priority, seq FROM cursors")}
        for dest in self.destinations:
            for prio, table in TABLES.items():
                cursor = stored.get((dest, prio))
                if cursor is None:
                    # A new destination starts from what is still buffered.
                    cursor = 0
                self.cursors[(dest, prio)] = cursor
                self.unsent[(dest, prio)] = conn.execute(
                    f"SELECT count(*) FROM {table} WHERE seq > ?", (cursor,)
                ).fetchone()[0]

    def _conn(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StoreError("store is not open")
        return self.conn

    # -- writing -------------------------------------------------------------------

    def commit(self, readings: Sequence[Reading]) -> int:
        """Commit readings in one transaction; return the last sequence number given."""
        conn = self._conn()
        new_series: dict[tuple[str, str, str], int] = {}
        rows: dict[Priority, list[tuple[int, int, int, int | float | None, int]]] = {p: [] for p in TABLES}
        seq = self.last_seq
        next_sid = max(self.series_by_id, default=0) + 1
        series = self.series
        for r in readings:
            key = (r.device, r.point, r.unit)
            sid = series.get(key) or new_series.get(key)
            if sid is None:
                sid = new_series[key] = next_sid
                next_sid += 1
            seq += 1
            stored, decimals = encode_value(r.value)
            rows[r.priority].append((seq, round(r.ts * 1000), sid, stored, r.quality | decimals << _DECIMAL_SHIFT))
        has_alarm = bool(rows[Priority.ALARM])
        try:
            if has_alarm:
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
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
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise _translate(exc) from exc
        finally:
            if has_alarm:
                conn.execute("PRAGMA synchronous = NORMAL")
        for key, sid in new_series.items():
            series[key] = sid
            self.series_by_id[sid] = key
        self.last_seq = seq
        for (dest, prio), _ in self.unsent.items():
            self.unsent[(dest, prio)] += len(rows[prio])
        return seq

    # -- reading for sync ----------------------------------------------------------

    def read_batch(self, destination: str, limit: int) -> Batch | None:
        """The next batch for a destination: alarms first, then events, then telemetry."""
        conn = self._conn()
        for prio, table in TABLES.items():
            cursor = self.cursors[(destination, prio)]
            rows = conn.execute(
                f"SELECT seq, ts_ms, series, value, flags FROM {table} WHERE seq > ? ORDER BY seq LIMIT ?",
                (cursor, limit),
            ).fetchall()
            if rows:
                return Batch(destination, prio, [self._stored(prio, *row) for row in rows])
        return None

    def _stored(
        self, prio: Priority, seq: int, ts_ms: int, sid: int, stored: int | float | None, flags: int
    ) -> StoredReading:
        device, point, unit = self.series_by_id[sid]
        quality = Quality(flags & ((1 << _DECIMAL_SHIFT) - 1))
        return StoredReading(seq, device, point, ts_ms / 1000, decode_value(stored, flags), unit, quality, prio)

    def ack(self, destination: str, priority: Priority, last_seq: int, count: int) -> None:
        """Advance a destination's cursor past an acknowledged batch."""
        conn = self._conn()
        key = (destination, priority)
        if last_seq <= self.cursors[key]:
            return
        try:
            conn.execute(
                "INSERT INTO cursors(destination, priority, seq) VALUES (?, ?, ?) "
                "ON CONFLICT(destination, priority) DO UPDATE SET seq = excluded.seq",
                (destination, int(priority), last_seq),
            )
        except sqlite3.OperationalError as exc:
            raise _translate(exc) from exc
        self.cursors[key] = last_seq
        self.unsent[key] = max(0, self.unsent[key] - count)

    def prune(self) -> int:
        """Delete rows every destination has acknowledged; return how many."""
        if not self.destinations:
            return 0
        conn = self._conn()
        deleted = 0
        # Persist the counter first, so deleting the newest rows can never let a
        # sequence number be handed out again.
        conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq' AND value < ?", (self.last_seq, self.last_seq))
        for prio, table in TABLES.items():
            floor = min(self.cursors[(d, prio)] for d in self.destinations)
            while True:
                cur = conn.execute(
                    f"DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} WHERE seq <= ? ORDER BY seq LIMIT ?)",
                    (floor, PRUNE_CHUNK_ROWS),
                )
                deleted += cur.rowcount
                if cur.rowcount < PRUNE_CHUNK_ROWS:
                    break
        return deleted

    # -- status --------------------------------------------------------------------

    def oldest_unsent(self, destination: str) -> float | None:
        conn = self._conn()
        oldest: float | None = None
        for prio, table in TABLES.items():
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
        destinations: Iterable[str] = (),
        commit_interval_ms: int = 1000,
        commit_max_readings: int = 1000,
        max_pending_readings: int = 100_000,
        beat: Any = None,
    ) -> None:
        self.path = path
        self.destinations = list(destinations)
        self.commit_interval_s = commit_interval_ms / 1000
        self.commit_max_readings = commit_max_readings
        self.max_pending_readings = max_pending_readings
        self._core = _Core(path, self.destinations)
        self._executor: ThreadPoolExecutor | None = None
        self._pending: deque[Reading] = deque()
        self._wake = asyncio.Event()
        self._listeners: list[asyncio.Event] = []
        self._task: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()
        self._counters = _Counters()
        self._beat = beat
        self._hang = False

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
        while True:
            if self._hang:
                log.warning("store commit loop hanging on request (debug signal)")
                await asyncio.Event().wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.commit_interval_s)
            self._wake.clear()
            try:
                await self.flush()
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

    async def next_batch(self, destination: str, limit: int) -> Batch | None:
        return await self._run(self._core.read_batch, destination, limit)

    async def ack(self, batch: Batch) -> None:
        await self._run(self._core.ack, batch.destination, batch.priority, batch.last_seq, len(batch.readings))

    async def prune(self) -> int:
        return await self._run(self._core.prune)

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
            dropped={k: dict(v) for k, v in self._counters.dropped.items()},
            last_error=self._counters.last_error,
            moved_aside=core.moved_aside,
        )


def open_core_for_bench(path: Path) -> _Core:
    """The synchronous core alone, for benchmarks that measure the store without a loop."""
    core = _Core(path, [])
    core.open()
    return core
