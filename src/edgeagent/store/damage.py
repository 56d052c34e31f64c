"""A damaged buffer: how it is recognised, moved aside, and what of it is saved.

Damage is anything that would make the buffer lose readings or hand out a sequence
number twice: a file that fails its integrity check, a file cut short or empty, a
write-ahead log that is garbage, or one that vanished after an unclean stop (its
commits are gone, and the counter with them). The file is never repaired in place: it
is moved aside exactly as found, a fresh buffer (with a new identity) numbers on from
the highest sequence number still known, and the unsent readings that can still be
read are copied into a *salvage* buffer that keeps the old identity and numbers, so a
receiver deduplicating on (gateway, buffer id, seq) takes each of them exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from edgeagent.store.schema import FILE_MODE, TABLES, create_file, new_buffer_id

log = logging.getLogger(__name__)

WAL_MAGIC = (0x377F0682, 0x377F0683)
MARKER_SUFFIX = ".salvaged"
WAL_HEADER_BYTES = 32
SCAN_CHUNK = 1024
GIVE_UP_WIDTH = 16  # a failing seq range this narrow is skipped: it sits in a broken page
MAX_IDLE_CHUNKS = 64  # past the highest known number, this many empty chunks end the scan
Row = tuple[int, int, int, object, int]


@dataclass(slots=True)
class Damage:
    """What was wrong with the buffer found at start, and what became of it."""

    kind: str  # "corrupt" | "empty" | "wal_garbage" | "wal_missing"
    detail: str
    moved_aside: str | None = None
    old_buffer_id: str | None = None
    salvaged: int = 0
    lost_at_most: int | None = None
    highest_seq: int = 0

    def message(self) -> str:
        lost = "an unknown number" if self.lost_at_most is None else f"at most {self.lost_at_most}"
        return (
            f"{self.detail}; moved aside to {self.moved_aside}; "
            f"{self.salvaged} unsent readings salvaged, {lost} lost; numbering goes on after {self.highest_seq}"
        )


class DamageFound(Exception):
    """Raised while opening: the file must be moved aside."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def inspect_before_open(path: Path) -> DamageFound | None:
    """Damage SQLite would pass over in silence: an empty file, a WAL that is not a WAL."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size == 0:
            return DamageFound("empty", "the buffer file is empty (zero length)")
    wal = Path(f"{path}-wal")
    try:
        with wal.open("rb") as f:
            header = f.read(WAL_HEADER_BYTES)
    except FileNotFoundError:
        return None
    if header and (len(header) < WAL_HEADER_BYTES or struct.unpack(">I", header[:4])[0] not in WAL_MAGIC):
        # SQLite ignores (and later overwrites) a log with a bad header: its commits would vanish.
        return DamageFound("wal_garbage", "the buffer's write-ahead log is not a valid log (overwritten?)")
    return None


def move_aside(path: Path, reason: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    log.error("store %s is damaged (%s); moving it aside to %s", path, reason, target)
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{target}{suffix}"))
    return target


def settle_asides(store_path: Path, damage: Damage | None) -> tuple[int, Damage | None]:
    """Salvage every file moved aside that is not salvaged yet; the highest seq any of them gave.

    Each finished salvage leaves a small marker beside its file with the numbers, so a
    crash at any point of a recovery is finished by the next start, never repeated.
    Returns (highest seq known, a Damage describing a recovery found interrupted).
    """
    highest = 0
    interrupted: Damage | None = None
    for aside in sorted(store_path.parent.glob(f"{store_path.name}.corrupt-*")):
        if aside.name.endswith(("-wal", "-shm", MARKER_SUFFIX)):
            continue
        marker = Path(f"{aside}{MARKER_SUFFIX}")
        if not marker.exists():
            this = damage if damage is not None and damage.moved_aside == str(aside) else None
            if this is None:
                this = Damage("corrupt", "a damaged buffer was moved aside by a start that was interrupted")
                this.moved_aside = str(aside)
                interrupted = interrupted or this
            salvage(aside, store_path, this)
            _write_marker(marker, this)
        highest = max(highest, _marker_highest(marker))
    return highest, interrupted


def _write_marker(marker: Path, damage: Damage) -> None:
    tmp = marker.with_name(marker.name + ".tmp")
    with os.fdopen(os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, FILE_MODE), "w") as f:
        f.write(f"highest_seq={damage.highest_seq} salvaged={damage.salvaged} lost_at_most={damage.lost_at_most}\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(marker)


def _marker_highest(marker: Path) -> int:
    try:
        fields = dict(part.split("=", 1) for part in marker.read_text().split())
        return int(fields["highest_seq"])
    except (OSError, ValueError, KeyError):
        return 0


def salvage_path(store_path: Path, buffer_id: str) -> Path:
    return store_path.with_name(f"{store_path.name}.salvage-{buffer_id}.sqlite")


def salvage_files(store_path: Path) -> list[Path]:
    """Salvage buffers beside the store, oldest first: they are sent before the store's own rows."""
    found = store_path.parent.glob(f"{store_path.name}.salvage-*.sqlite")
    return sorted(found, key=lambda p: p.stat().st_mtime)


def salvage(aside: Path, store_path: Path, damage: Damage) -> None:
    """Copy the readable, unsent rows of a file moved aside into a salvage buffer.

    Fills in ``damage``: the old identity, how many rows were saved and at most how many
    are lost, and the highest sequence number still known (the fresh buffer goes on from it).
    """
    if not aside.exists() or aside.stat().st_size == 0:
        return
    try:
        conn = sqlite3.connect(f"file:{aside}?mode=ro", uri=True, isolation_level=None)
        # Tolerate a schema naming pages past the end of a file cut short: the tables
        # whose pages are still there stay readable.
        conn.execute("PRAGMA writable_schema = ON")
    except sqlite3.Error as exc:
        log.error("cannot open %s to salvage it: %s", aside, exc)
        return
    try:
        _salvage(conn, store_path, damage)
    except sqlite3.Error as exc:
        log.error("salvaging %s stopped: %s", aside, exc)
    finally:
        conn.close()


def _one(conn: sqlite3.Connection, sql: str, default: object = None) -> object:
    try:
        row = conn.execute(sql).fetchone()
    except sqlite3.Error:
        return default
    return default if row is None or row[0] is None else row[0]


def _all(conn: sqlite3.Connection, sql: str) -> list[tuple[object, ...]]:
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.Error:
        return []


def _salvage(conn: sqlite3.Connection, store_path: Path, damage: Damage) -> None:
    old_id = _one(conn, "SELECT value FROM info WHERE key = 'buffer_id'")
    damage.old_buffer_id = old_id if isinstance(old_id, str) else None
    counter = _one(conn, "SELECT value FROM meta WHERE key = 'last_seq'")
    highest = int(counter) if isinstance(counter, int) else 0
    lowest_present: int | None = None
    for table in TABLES.values():
        highest = max(highest, int(_one(conn, f"SELECT max(seq) FROM {table}", 0)))  # type: ignore[call-overload]
        low = _one(conn, f"SELECT min(seq) FROM {table}")
        if isinstance(low, int):
            lowest_present = low if lowest_present is None else min(lowest_present, low)
    cursors = [(str(d), int(p), int(s)) for d, p, s in _all(conn, "SELECT destination, priority, seq FROM cursors")]  # type: ignore[call-overload]
    # Below the lowest cursor everything was delivered; without cursors, send all (the
    # old identity makes a repeat harmless to a deduplicating receiver).
    floor = min((s for _, _, s in cursors), default=0)
    if lowest_present is not None:
        floor = max(floor, min(lowest_present - 1, highest))
    series = _all(conn, "SELECT id, device, point, unit FROM series")
    known_series = {row[0] for row in series}
    rows: dict[str, list[Row]] = {}
    for table in TABLES.values():
        rows[table] = [r for r in _readable_rows(conn, table, floor, highest) if r[2] in known_series]
    saved = sum(len(r) for r in rows.values())
    highest = max([highest, *(r[-1][0] for r in rows.values() if r)])
    damage.highest_seq = max(damage.highest_seq, highest)
    damage.salvaged = saved
    # Without the counter or any row, how much there was is not known.
    damage.lost_at_most = max(0, highest - floor - saved) if isinstance(counter, int) or saved else None
    if not saved:
        return
    boots = _all(conn, "SELECT first_seq, boot FROM boots")
    buffer_id = damage.old_buffer_id or new_buffer_id()
    target = salvage_path(store_path, buffer_id)
    create_file(target, last_seq=highest, buffer_id=buffer_id)
    out = sqlite3.connect(target, isolation_level=None)
    try:
        out.execute("BEGIN")
        out.executemany("INSERT INTO series(id, device, point, unit) VALUES (?, ?, ?, ?)", series)
        out.executemany("INSERT INTO cursors(destination, priority, seq) VALUES (?, ?, ?)", cursors)
        out.executemany("INSERT INTO boots(first_seq, boot) VALUES (?, ?)", boots)
        for table, batch in rows.items():
            out.executemany(f"INSERT INTO {table}(seq, ts_ms, series, value, flags) VALUES (?, ?, ?, ?, ?)", batch)
        out.execute("COMMIT")
    finally:
        out.close()
    log.warning("salvaged %d unsent readings of buffer %s into %s", saved, buffer_id, target.name)


def _readable_rows(conn: sqlite3.Connection, table: str, after: int, highest: int) -> list[Row]:
    """Rows with seq above ``after``, skipping the ranges that sit in broken pages.

    The highest number may itself be unreadable, so the scan goes on in chunks until a
    long run of chunks past the highest known number holds nothing.
    """
    columns = f"SELECT seq, ts_ms, series, value, flags FROM {table}"
    try:
        return conn.execute(f"{columns} WHERE seq > ? ORDER BY seq", (after,)).fetchall()
    except sqlite3.Error:
        pass
    out: list[Row] = []

    def scan(lo: int, hi: int) -> int:
        """Rows found in [lo, hi], or -1 when none of it could be read."""
        try:
            rows = conn.execute(f"{columns} WHERE seq BETWEEN ? AND ? ORDER BY seq", (lo, hi)).fetchall()
        except sqlite3.Error:
            if hi - lo < GIVE_UP_WIDTH:
                return -1
            mid = (lo + hi) // 2
            left, right = scan(lo, mid), scan(mid + 1, hi)
            return -1 if left < 0 and right < 0 else max(left, 0) + max(right, 0)
        out.extend(rows)
        return len(rows)

    lo, idle = after + 1, 0
    while idle <= MAX_IDLE_CHUNKS or lo <= highest:
        found = scan(lo, lo + SCAN_CHUNK - 1)
        idle = 0 if found > 0 else idle + 1
        lo += SCAN_CHUNK
    return out
