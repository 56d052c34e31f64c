"""The synchronous store: every method runs on the store's single thread.

See ``edgeagent.store`` for the shape and the reasons; this module is the SQLite side.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgeagent.clock import boot_id
from edgeagent.errors import StoreCorrupt, StoreError, StoreFull
from edgeagent.model import Priority, Quality, Reading, StoredReading
from edgeagent.store.codec import (
    BOOT_TIME_FLAG,
    DEFAULT_ROW_BYTES,
    PAGE_FACTOR,
    QUALITY_MASK,
    TEXT_FLAG,
    decode_text,
    decode_value,
    encode_value,
    row_bytes,
)
from edgeagent.store.damage import Damage, DamageFound, inspect_before_open, move_aside, settle_asides
from edgeagent.store.schema import TABLES, create_file, ensure_dir, migrate
from edgeagent.store.types import DEFAULT_BUDGETS, Batch, Budget, DestinationFilter

log = logging.getLogger(__name__)

PRUNE_CHUNK_ROWS = 20_000
WAL_LIMIT_BYTES = 8 * 1024 * 1024
PAGE_BYTES = 4096
# When a class is full, free this share of its budget beyond what the batch needs, so
# a full class does not delete a few rows on every single commit.
BUDGET_SLACK = 0.02


class _Core:
    """The synchronous store; every method runs on the store's single thread."""

    def __init__(
        self,
        path: Path,
        destinations: Mapping[str, DestinationFilter],
        budgets: Mapping[Priority, Budget] | None = None,
        *,
        number_above: int = 0,
    ) -> None:
        self.path = path
        # A buffer made to replace one that went bad while running numbers on above this.
        self.number_above = number_above
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
        self.damage: Damage | None = None
        self.created = False  # a new buffer, not one found on the card
        self.buffer_id = ""
        # (first seq, boot id) of each boot whose readings carry boot-relative times.
        self.boots: list[tuple[int, str]] = []
        self.this_boot_from: int | None = None
        # Cursors acknowledged in memory but not yet written (the disk was full).
        self.unsaved_cursors: set[tuple[str, Priority]] = set()

    # -- opening -------------------------------------------------------------------

    def open(self) -> None:
        """Open the buffer; a damaged one is moved aside, salvaged, and replaced by a fresh one."""
        ensure_dir(self.path.parent)
        found = inspect_before_open(self.path)
        if found is None:
            try:
                self._open_checked()
                return
            except DamageFound as exc:
                found = exc
            except sqlite3.DatabaseError as exc:
                found = DamageFound("corrupt", f"the buffer failed its integrity check ({exc})")
            self._reset()
        aside = move_aside(self.path, found.detail)
        self.damage = Damage(found.kind, found.detail, moved_aside=str(aside))
        self._open_checked()  # the file is gone: salvage, then a fresh one

    def open_salvage(self) -> None:
        """Open a salvage buffer: only read, acknowledged and finally deleted."""
        self._open_checked(salvage=True)

    def _reset(self) -> None:
        self._close_quietly()
        self.__init__(self.path, self.filters, self.budgets, number_above=self.number_above)  # type: ignore[misc]

    def probe(self) -> None:
        """Read the buffer's ends again from the file, not the cache: damage shows within seconds.

        The page cache is dropped first, so a page that went bad on the card is really read.
        """
        conn = self._conn()
        conn.execute("PRAGMA shrink_memory")
        conn.execute("SELECT count(*) FROM series").fetchone()
        for table in TABLES.values():
            conn.execute(f"SELECT seq, ts_ms, value FROM {table} ORDER BY seq LIMIT 1").fetchone()
            conn.execute(f"SELECT seq, ts_ms, value FROM {table} ORDER BY seq DESC LIMIT 1").fetchone()
        for (dest, prio), cursor in self.cursors.items():
            if prio in self.filters[dest].classes:
                table = TABLES[prio]
                conn.execute(f"SELECT seq, ts_ms, value FROM {table} WHERE seq > ? LIMIT 1", (cursor,)).fetchone()

    def _open_checked(self, *, salvage: bool = False) -> None:
        wal_existed = Path(f"{self.path}-wal").exists()
        if not salvage and not self.path.exists():
            # Salvage what was moved aside (now, or by a start that was interrupted) first,
            # and number on above every sequence number any of it ever gave.
            highest, interrupted = settle_asides(self.path, self.damage)
            self.damage = self.damage or interrupted
            create_file(self.path, last_seq=max(highest, self.number_above))
            self.created = self.damage is None
            wal_existed = True
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn = conn
        conn.execute("PRAGMA busy_timeout = 5000")
        # Check before anything writes, so a damaged file is moved aside exactly as found.
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {result}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.DatabaseError(f"cannot enable WAL (journal_mode={mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Keep the WAL small next to the budgets (a small budget must mean a small footprint).
        total = sum(b.max_bytes for b in self.budgets.values())
        wal_pages = max(64, min(1000, total // PAGE_BYTES // 16))
        conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
        conn.execute(f"PRAGMA journal_size_limit = {min(WAL_LIMIT_BYTES, wal_pages * PAGE_BYTES * 2)}")
        migrate(conn)
        if not salvage:
            running = conn.execute("SELECT value FROM meta WHERE key = 'running'").fetchone()
            if running is not None and running[0] and not wal_existed:
                # Stopped uncleanly, and the log holding its last commits is gone.
                raise DamageFound("wal_missing", "the buffer's write-ahead log vanished after an unclean stop")
            # Marked in the main file itself, so a log lost later is noticed.
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('running', 1)")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._load_state()

    def _load_state(self) -> None:
        conn = self._conn()
        self.buffer_id = conn.execute("SELECT value FROM info WHERE key = 'buffer_id'").fetchone()[0]
        self.boots = [(first, boot) for first, boot in conn.execute("SELECT first_seq, boot FROM boots ORDER BY 1")]
        for first, boot in self.boots:
            if boot == boot_id():
                self.this_boot_from = first
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
        self._load_cursors()

    def set_budgets(self, budgets: Mapping[Priority, Budget]) -> None:
        self.budgets = dict(budgets)

    def set_filters(self, filters: Mapping[str, DestinationFilter]) -> None:
        """Take a new set of destinations; a known one keeps its cursors, a new one starts from the buffer."""
        self.filters = dict(filters)
        self.destinations = list(filters)
        self.cursors = {k: v for k, v in self.cursors.items() if k[0] in self.filters}
        self.unsent = {}
        self._load_cursors()

    def _load_cursors(self) -> None:
        conn = self._conn()
        stored = {(d, Priority(p)): s for d, p, s in conn.execute("SELECT destination, priority, seq FROM cursors")}
        for dest, filt in self.filters.items():
            for prio, table in TABLES.items():
                # A new destination starts from what is still buffered.
                cursor = self.cursors.get((dest, prio), stored.get((dest, prio), 0))
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
        rows: dict[Priority, list[tuple[int, int, int, int | float | str | None, int]]] = {p: [] for p in TABLES}
        cost: dict[Priority, float] = dict.fromkeys(TABLES, 0.0)
        seq = self.last_seq
        next_sid = max(self.series_by_id, default=0) + 1
        series = self.series
        boot_from = self.this_boot_from
        for r in kept:
            key = (r.device, r.point, r.unit)
            sid = series.get(key) or new_series.get(key)
            if sid is None:
                sid = new_series[key] = next_sid
                next_sid += 1
            seq += 1
            stored, flags = encode_value(r.value, r.reason)
            flags |= r.quality
            if r.boot_relative:
                flags |= BOOT_TIME_FLAG
                if boot_from is None:
                    boot_from = seq
            rows[r.priority].append((seq, round(r.ts * 1000), sid, stored, flags))
            cost[r.priority] += row_bytes(seq, stored, flags)
        new_boot = boot_from is not None and self.this_boot_from is None
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
                if new_boot:
                    conn.execute("INSERT INTO boots(first_seq, boot) VALUES (?, ?)", (boot_from, boot_id()))
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
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        finally:
            if has_alarm:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA synchronous = NORMAL")
        # The transaction is durable: now update what is kept in memory.
        if new_boot and boot_from is not None:
            self.this_boot_from = boot_from
            self.boots.append((boot_from, boot_id()))
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
            # A batch holds either wall-clock times or boot-relative ones, never both:
            # a SenML pack's base time cannot speak for a record that has no time.
            boot_time = rows[0][4] & BOOT_TIME_FLAG
            for i, row in enumerate(rows):
                if row[4] & BOOT_TIME_FLAG != boot_time:
                    rows = rows[:i]
                    break
            scanned_to = rows[-1][0]
            if filt.devices is not None:
                devices, by_id = filt.devices, self.series_by_id
                rows = [r for r in rows if by_id[r[2]][0] in devices]
            readings = [self._stored(prio, *r) for r in rows]
            return Batch(destination, prio, readings, scanned_to=scanned_to, buffer_id=self.buffer_id)
        return None

    def _stored(
        self, prio: Priority, seq: int, ts_ms: int, sid: int, stored: int | float | str | None, flags: int
    ) -> StoredReading:
        device, point, unit = self.series_by_id[sid]
        quality = Quality(flags & QUALITY_MASK)
        boot = self._boot_of(seq) if flags & BOOT_TIME_FLAG else None
        if flags & TEXT_FLAG:
            text, reason = decode_text(str(stored))
            return StoredReading(seq, device, point, ts_ms / 1000, text, unit, quality, prio, boot, reason)
        return StoredReading(seq, device, point, ts_ms / 1000, decode_value(stored, flags), unit, quality, prio, boot)

    def _boot_of(self, seq: int) -> str:
        i = bisect.bisect_right(self.boots, (seq, "\uffff")) - 1
        return self.boots[i][1] if i >= 0 else "unknown"

    def ack(self, destination: str, priority: Priority, scanned_to: int, count: int) -> bool:
        """Advance a destination's cursor past an acknowledged (or wholly filtered) batch.

        The cursor moves in memory whatever happens; if it cannot be written (a full
        disk) it is kept for ``save_cursors`` and False is returned. A crash before then
        only means the batch is sent again, which receivers tolerate.
        """
        key = (destination, priority)
        if scanned_to <= self.cursors[key]:
            return True
        self.cursors[key] = scanned_to
        self.unsent[key] = max(0, self.unsent[key] - count)
        self.unsaved_cursors.add(key)
        return self.save_cursors()

    def save_cursors(self) -> bool:
        """Write the cursors moved in memory; False while the disk refuses."""
        if not self.unsaved_cursors:
            return True
        conn = self._conn()
        try:
            conn.executemany(
                "INSERT INTO cursors(destination, priority, seq) VALUES (?, ?, ?) "
                "ON CONFLICT(destination, priority) DO UPDATE SET seq = excluded.seq",
                [(d, int(p), self.cursors[(d, p)]) for d, p in self.unsaved_cursors],
            )
        except sqlite3.Error as exc:
            log.debug("cursor write failed: %s", exc)
            return False
        self.unsaved_cursors.clear()
        return True

    def retime(self, offset_s: float) -> int:
        """Give this boot's boot-relative readings their wall time, now that the clock is set."""
        if self.this_boot_from is None:
            return 0
        conn = self._conn()
        offset_ms = round(offset_s * 1000)
        n = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            for table in TABLES.values():
                n += conn.execute(
                    f"UPDATE {table} SET ts_ms = ts_ms + ?, flags = flags & ? WHERE seq >= ? AND flags & ?",
                    (offset_ms, ~BOOT_TIME_FLAG, self.this_boot_from, BOOT_TIME_FLAG),
                ).rowcount
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise _translate(exc) from exc
        return n

    def checkpoint(self) -> None:
        """Fold the WAL into the main file and cut it to nothing: space runs low."""
        with contextlib.suppress(sqlite3.Error):
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

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
                self.save_cursors()
                for prio in TABLES:
                    if self.rows[prio]:
                        self.conn.execute(
                            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                            (f"row_millibytes:{prio.name.lower()}", int(self._per_row(prio) * 1000)),
                        )
                self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('running', 0)")
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._close_quietly()

    def delete_files(self) -> None:
        """Remove a salvage buffer that every destination has acknowledged."""
        self._close_quietly()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def fully_sent(self) -> bool:
        """Every destination has acknowledged every row it takes (a salvage buffer can go)."""
        if not self.filters:
            return False
        conn = self._conn()
        for dest, filt in self.filters.items():
            for prio in filt.classes:
                row = conn.execute(
                    f"SELECT 1 FROM {TABLES[prio]} WHERE seq > ? LIMIT 1", (self.cursors[(dest, prio)],)
                ).fetchone()
                if row is not None:
                    return False
        return True

    def _close_quietly(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None


def _translate(exc: sqlite3.Error) -> StoreError:
    """The project's error for a SQLite one: nothing above the store sees sqlite3."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return StoreFull(f"disk full: {exc}")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in str(exc):
        return StoreCorrupt(f"the buffer is damaged: {exc}")
    return StoreError(f"store access failed: {exc}")
