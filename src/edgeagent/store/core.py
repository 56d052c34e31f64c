"""The synchronous store: every method runs on the store's single thread.

See ``edgeagent.store`` for the shape and the reasons; this module is the SQLite side:
a table of blocks per class (``edgeagent.store.blocks``), series, cursors, budgets, and
at open the tail a run left behind (``edgeagent.store.tail``).
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
from edgeagent.errors import StoreError
from edgeagent.model import Priority, StoredReading
from edgeagent.store import blocks
from edgeagent.store.blockio import CursorItems, _Blocks, _translate
from edgeagent.store.budget import Freed, make_room
from edgeagent.store.damage import Damage, DamageFound, inspect_before_open, move_aside, settle_asides
from edgeagent.store.replay import take_tail
from edgeagent.store.schema import BLOCKS, create_file, ensure_dir, migrate
from edgeagent.store.types import DEFAULT_BUDGETS, Budget, DestinationFilter

log = logging.getLogger(__name__)

WAL_LIMIT_BYTES = 8 * 1024 * 1024
PAGE_BYTES = 4096
# Sequence numbers reserved durably (fsync'd) ahead of use: after a power cut, which can
# take the last seconds of the tail with it, numbering goes on above them, never reusing one.
RESERVE_SEQS = 200_000


class _Core(_Blocks):
    """The synchronous store; every method runs on the store's single thread.

    For the buffer in use, the event loop owns ``cursors``, ``unsent`` and the series it
    numbers readings with; this thread reads them and is handed what to write.
    """

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
        self.series_saved = 0  # highest series id in the file
        self.last_seq = 0  # highest number known to be given
        self.reserved_upto = 0
        self.cursors: dict[tuple[str, Priority], int] = {}
        self.unsent: dict[tuple[str, Priority], int] = {}
        self.rows: dict[Priority, int] = dict.fromkeys(BLOCKS, 0)  # readings in blocks
        self.bytes: dict[Priority, int] = dict.fromkeys(BLOCKS, 0)  # budget bytes of the blocks
        self.top: dict[Priority, int] = dict.fromkeys(BLOCKS, 0)  # highest seq in a block
        self.dropped: dict[str, dict[str, int]] = {}
        # Highest sequence number a policy has deleted, per class: a batch held for a retry
        # that reaches back to it holds readings that no longer exist and must be re-read.
        self.dropped_upto: dict[Priority, int] = dict.fromkeys(BLOCKS, 0)
        self.damage: Damage | None = None
        self.created = False  # a new buffer, not one found on the card
        self.clean_stop = True  # the last run closed the file
        self.buffer_id = ""
        # (first seq, boot id) of each boot whose readings carry boot-relative times.
        self.boots: list[tuple[int, str]] = []
        self.this_boot_from: int | None = None
        # Cursors acknowledged but not yet written (a salvage buffer's, while the disk is full).
        self.unsaved_cursors: set[tuple[str, Priority]] = set()
        self.tail_note: str | None = None  # what the tail of the last run held, for the log
        self._cache: dict[Priority, tuple[int, list[StoredReading]]] = {}

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
        conn.execute("SELECT count(*), max(id) FROM series").fetchone()
        conn.execute("SELECT count(*), sum(value) FROM meta").fetchone()
        conn.execute("SELECT count(*), sum(seq) FROM cursors").fetchone()
        for table in BLOCKS.values():
            for order in ("", "DESC"):
                conn.execute(f"SELECT first_seq, data FROM {table} ORDER BY first_seq {order} LIMIT 1").fetchone()

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
            self.clean_stop = not (running is not None and running[0])
            # Marked in the main file itself, so a log lost later is noticed.
            self._set_meta("running", 1)
        self._load_state()
        if not salvage:
            take_tail(self)
            self.reserved_upto = self.last_seq + RESERVE_SEQS
            self._set_meta("reserved_upto", self.reserved_upto)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _load_state(self) -> None:
        conn = self._conn()
        self.buffer_id = conn.execute("SELECT value FROM info WHERE key = 'buffer_id'").fetchone()[0]
        self.boots = [(first, boot) for first, boot in conn.execute("SELECT first_seq, boot FROM boots ORDER BY 1")]
        self.this_boot_from = next((first for first, boot in self.boots if boot == boot_id()), None)
        for sid, device, point, unit in conn.execute("SELECT id, device, point, unit FROM series"):
            self.series[(device, point, unit)] = sid
            self.series_by_id[sid] = (device, point, unit)
        self.series_saved = max(self.series_by_id, default=0)
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        # meta holds the counter as of the last deletion or clean stop; blocks hold anything newer.
        last = meta.get("last_seq", 0)
        for prio, table in BLOCKS.items():
            top = 0
            for last_seq, count, size in conn.execute(f"SELECT last_seq, count, length(data) FROM {table}"):
                top = max(top, last_seq)
                self.rows[prio] += count
                self.bytes[prio] += blocks.block_cost(size)
            self.top[prio] = top
            last = max(last, top)
        self.last_seq = last
        self.reserved_upto = meta.get("reserved_upto", 0)
        for key, value in meta.items():
            if key.startswith("dropped:"):
                _, cls, reason = key.split(":", 2)
                self.dropped.setdefault(cls, {})[reason] = value
        self.cursors, self.unsent = self.cursor_state(self.filters)

    def set_budgets(self, budgets: Mapping[Priority, Budget]) -> None:
        self.budgets = dict(budgets)

    def cursor_state(
        self, filters: Mapping[str, DestinationFilter]
    ) -> tuple[dict[tuple[str, Priority], int], dict[tuple[str, Priority], int]]:
        """Cursors and unsent counts for a set of destinations: a known one keeps its cursors,
        a new one starts from what is buffered. Counts cover this file's blocks only."""
        conn = self._conn()
        stored = {(d, Priority(p)): s for d, p, s in conn.execute("SELECT destination, priority, seq FROM cursors")}
        cursors, unsent = {}, {}
        for dest, filt in filters.items():
            for prio in BLOCKS:
                cursor = self.cursors.get((dest, prio), stored.get((dest, prio), 0))
                cursors[(dest, prio)] = cursor
                unsent[(dest, prio)] = self._count_after(prio, cursor) if prio in filt.classes else 0
        return cursors, unsent

    def set_filters(self, filters: Mapping[str, DestinationFilter]) -> None:
        """A salvage buffer's new destinations (the buffer in use is changed by its owner)."""
        self.filters = dict(filters)
        self.destinations = list(filters)
        self.cursors, self.unsent = self.cursor_state(filters)

    def _conn(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StoreError("store is not open")
        return self.conn

    def _set_meta(self, key: str, value: int) -> None:
        # An update in place: REPLACE would delete and insert, writing the key's index page too.
        self._conn().execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- writing -------------------------------------------------------------------

    def commit(
        self,
        readings: Sequence[StoredReading],
        *,
        series: Sequence[tuple[int, str, str, str]] = (),
        boots: Sequence[tuple[int, str]] = (),
        drops: Mapping[tuple[Priority, str], int] | None = None,
        reserve: int | None = None,
        cursors: CursorItems = (),
        full: bool = False,
        per_block: int = 5000,
    ) -> dict[Priority, Freed]:
        """Write numbered readings (in sequence order) as blocks of at most ``per_block``
        readings of one class, in one transaction.

        Full classes give up room by their policy inside the same transaction, so the
        buffer never exceeds its budgets by more than one batch. ``series`` and ``boots``
        are the ones the readings use that the file does not have yet; ``drops`` counts
        to add; ``reserve`` a new reservation of numbers (written through, with an fsync,
        as is a transaction holding an alarm); ``cursors`` to write. Returns what each
        full class gave up.
        """
        conn = self._conn()
        by_class: dict[Priority, list[StoredReading]] = {}
        for r in readings:
            by_class.setdefault(r.priority, []).append(r)
        parts = [(p, rs[i : i + per_block]) for p, rs in by_class.items() for i in range(0, len(rs), per_block)]
        blobs = [(p, part, blocks.compress([blocks.encode_segment(part, self.series)])) for p, part in parts]
        full = full or Priority.ALARM in by_class or reserve is not None
        freed: dict[Priority, Freed] = {}
        counts = dict(drops or {})
        saved = (dict(self.rows), dict(self.bytes), dict(self.top))
        try:
            if full:
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                if boots:
                    conn.executemany("INSERT OR IGNORE INTO boots(first_seq, boot) VALUES (?, ?)", boots)
                if series:
                    conn.executemany(
                        "INSERT OR IGNORE INTO series(id, device, point, unit) VALUES (?, ?, ?, ?)", series
                    )
                for prio, part, blob in blobs:
                    # Room is made block by block: never more than one block over the budget.
                    budget = self.budgets[prio]
                    need = self.bytes[prio] + blocks.block_cost(len(blob)) - budget.max_bytes
                    if need > 0 and budget.policy != "reject_new" and self.rows[prio]:
                        f = make_room(self, prio, budget, need, self._ack_floor(prio))
                        into = freed.setdefault(prio, Freed(f.reason))
                        into.reason = f.reason if f.dropped else into.reason
                        into.dropped += f.dropped
                        into.removed += f.removed
                        into.bytes += f.bytes
                    self._insert_block(prio, part, blob)
                for prio, f in freed.items():
                    f.dropped.sort()
                    if f.dropped:
                        counts[(prio, f.reason)] = counts.get((prio, f.reason), 0) + len(f.dropped)
                for (prio, reason), n in counts.items():
                    conn.execute(
                        "INSERT INTO meta(key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                        (f"dropped:{prio.name.lower()}:{reason}", n),
                    )
                if reserve is not None:
                    self._set_meta("reserved_upto", reserve)
                self._write_cursors(cursors)
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (it does on a full disk).
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException as exc:
            self.rows, self.bytes, self.top = saved
            self._cache.clear()
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc) from exc
            raise
        finally:
            if full:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA synchronous = NORMAL")
        # The transaction is durable: now what is kept in memory.
        if reserve is not None:
            self.reserved_upto = reserve
        self.series_saved = max([self.series_saved, *(s[0] for s in series)])
        for first, boot in boots:
            if (first, boot) not in self.boots:
                bisect.insort(self.boots, (first, boot))
        for (prio, reason), n in counts.items():
            per = self.dropped.setdefault(prio.name.lower(), {})
            per[reason] = per.get(reason, 0) + n
        for prio, f in freed.items():
            if f.dropped:
                self.dropped_upto[prio] = max(self.dropped_upto[prio], f.dropped[-1])
        if readings:
            self.last_seq = max(self.last_seq, readings[-1].seq)
        return freed

    def _write_cursors(self, items: CursorItems) -> None:
        if items:
            self._conn().executemany(
                "INSERT INTO cursors(destination, priority, seq) VALUES (?, ?, ?) "
                "ON CONFLICT(destination, priority) DO UPDATE SET seq = excluded.seq",
                [(d, int(p), s) for d, p, s in items],
            )

    def write_cursors(self, items: CursorItems) -> bool:
        """Write cursors on their own; False while the disk refuses (a crash then only resends)."""
        try:
            self._write_cursors(items)
        except sqlite3.Error as exc:
            log.debug("cursor write failed: %s", exc)
            return False
        return True

    def _ack_floor(self, prio: Priority) -> int:
        """Highest seq of a class that every destination sending that class has acknowledged."""
        cursors = [self.cursors[(d, prio)] for d, f in self.filters.items() if prio in f.classes]
        if not cursors:
            return self.last_seq if self.filters else 0
        return min(cursors)

    def ack(self, destination: str, priority: Priority, scanned_to: int, count: int) -> bool:
        """Advance a salvage buffer's cursor; False if it could not be written (it is kept)."""
        key = (destination, priority)
        if scanned_to <= self.cursors[key]:
            return True
        self.cursors[key] = scanned_to
        self.unsent[key] = max(0, self.unsent[key] - count)
        self.unsaved_cursors.add(key)
        return self.save_cursors()

    def save_cursors(self) -> bool:
        """Write a salvage buffer's cursors moved in memory; False while the disk refuses."""
        if not self.unsaved_cursors:
            return True
        if not self.write_cursors([(d, p, self.cursors[(d, p)]) for d, p in self.unsaved_cursors]):
            return False
        self.unsaved_cursors.clear()
        return True

    def close(self, last_seq: int | None = None, cursors: CursorItems = ()) -> None:
        """A clean stop: the counter is written and the reservation given back."""
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.save_cursors()
                self._write_cursors(cursors)
                last = max(self.last_seq, last_seq or 0)
                self._set_meta("last_seq", last)
                self._set_meta("reserved_upto", last)
                self._set_meta("running", 0)
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._close_quietly()

    def delete_files(self) -> None:
        """Remove a salvage buffer that every destination has acknowledged."""
        self._close_quietly()
        for suffix in ("", "-wal", "-shm", "-tail"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def fully_sent(self) -> bool:
        """Every destination has acknowledged every reading it takes (a salvage buffer can go)."""
        if not self.filters:
            return False
        return all(
            self.cursors[(dest, prio)] >= self.top[prio] for dest, filt in self.filters.items() for prio in filt.classes
        )

    def _close_quietly(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None
