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

from edgeagent.model import Priority, StoredReading
from edgeagent.store import blocks
from edgeagent.store.convert import convert_row
from edgeagent.store.schema import BLOCKS, CONVERT_BLOCK_READINGS, FILE_MODE, TABLES, create_file, new_buffer_id

log = logging.getLogger(__name__)

WAL_MAGIC = (0x377F0682, 0x377F0683)
MARKER_SUFFIX = ".salvaged"
WAL_HEADER_BYTES = 32
SCAN_CHUNK = 1024
GIVE_UP_WIDTH = 16  # a failing seq range this narrow is skipped: it sits in a broken page
MAX_IDLE_CHUNKS = 64  # past the highest known number, this many empty chunks end the scan
Row = tuple[object, ...]


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
    for suffix in ("", "-wal", "-shm", "-tail"):
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
        _salvage(conn, aside, store_path, damage)
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


def _salvage(conn: sqlite3.Connection, aside: Path, store_path: Path, damage: Damage) -> None:
    from edgeagent.store.replay import tail_readings

    old_id = _one(conn, "SELECT value FROM info WHERE key = 'buffer_id'")
    damage.old_buffer_id = old_id if isinstance(old_id, str) else None
    counter = _one(conn, "SELECT value FROM meta WHERE key = 'last_seq'")
    highest = int(counter) if isinstance(counter, int) else 0
    series = _all(conn, "SELECT id, device, point, unit FROM series")
    names: dict[int, tuple[str, str, str]] = {int(r[0]): (str(r[1]), str(r[2]), str(r[3])) for r in series}  # type: ignore[call-overload]
    boots = sorted(_all(conn, "SELECT first_seq, boot FROM boots"))
    cursor_rows = _all(conn, "SELECT destination, priority, seq FROM cursors")
    cursors = {(str(d), int(p)): int(s) for d, p, s in cursor_rows}  # type: ignore[call-overload]
    found: dict[Priority, dict[int, StoredReading]] = {p: {} for p in BLOCKS}
    # Tables of this file's format (rows before schema step 3, blocks since); all when unknown.
    tables = {str(r[0]) for r in _all(conn, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    tables = tables or {*TABLES.values(), *BLOCKS.values()}
    for prio, table in TABLES.items():
        if table not in tables:
            continue
        highest = max(highest, int(_one(conn, f"SELECT max(seq) FROM {table}", 0)))  # type: ignore[call-overload]
        for row in _readable_rows(conn, table, 0, highest):
            if row[2] in names:
                found[prio][int(row[0])] = convert_row(prio, names, *row)  # type: ignore[arg-type]
    for table in BLOCKS.values():
        highest = max(highest, int(_one(conn, f"SELECT max(last_seq) FROM {table}", 0)))  # type: ignore[call-overload]
    for prio, table in BLOCKS.items():
        if table not in tables:
            continue
        for r in _readable_blocks(conn, table, prio, names, boots, highest):
            found[prio][r.seq] = r
    tail = tail_readings(Path(f"{aside}-tail"), names)
    if tail is not None and tail.buffer_id in (None, damage.old_buffer_id):
        for sid, device, point, unit in tail.series:
            names[sid] = (device, point, unit)
            series.append((sid, device, point, unit))
        for (dest, prio), seq in tail.acks.items():
            cursors[(dest, int(prio))] = max(cursors.get((dest, int(prio)), 0), seq)
        for prio, readings in tail.readings.items():
            for r in readings:
                found[prio].setdefault(r.seq, r)
        highest = max(highest, tail.highest)
        timed = [r.seq for rs in tail.readings.values() for r in rs if r.boot is not None]
        if timed:
            boots = sorted({*boots, (min(timed), tail.boot)})
    present = [s for per in found.values() for s in per]
    highest = max([highest, *present])
    # Below the lowest cursor everything was delivered; without cursors, send all (the
    # old identity makes a repeat harmless to a deduplicating receiver).
    floor = min(cursors.values(), default=0)
    if present:
        floor = max(floor, min(min(present) - 1, highest))
    rows = {p: sorted((r for r in per.values() if r.seq > floor), key=lambda r: r.seq) for p, per in found.items()}
    saved = sum(len(r) for r in rows.values())
    damage.highest_seq = max(damage.highest_seq, highest)
    damage.salvaged = saved
    # Without the counter or any reading, how much there was is not known.
    damage.lost_at_most = max(0, highest - floor - saved) if isinstance(counter, int) or saved else None
    if not saved:
        return
    buffer_id = damage.old_buffer_id or new_buffer_id()
    target = salvage_path(store_path, buffer_id)
    create_file(target, last_seq=highest, buffer_id=buffer_id)
    sids = {v: k for k, v in names.items()}
    out = sqlite3.connect(target, isolation_level=None)
    try:
        out.execute("BEGIN")
        out.executemany("INSERT INTO series(id, device, point, unit) VALUES (?, ?, ?, ?)", series)
        out.executemany(
            "INSERT INTO cursors(destination, priority, seq) VALUES (?, ?, ?)",
            [(d, p, s) for (d, p), s in cursors.items()],
        )
        out.executemany("INSERT INTO boots(first_seq, boot) VALUES (?, ?)", boots)
        for prio, readings in rows.items():
            for i in range(0, len(readings), CONVERT_BLOCK_READINGS):
                part = readings[i : i + CONVERT_BLOCK_READINGS]
                blob = blocks.compress([blocks.encode_segment(part, sids)])
                out.execute(
                    f"INSERT INTO {BLOCKS[prio]}(first_seq, last_seq, count, boot_timed, data) VALUES (?, ?, ?, ?, ?)",
                    (part[0].seq, part[-1].seq, len(part), sum(r.boot is not None for r in part), blob),
                )
        out.execute("COMMIT")
    finally:
        out.close()
    log.warning("salvaged %d unsent readings of buffer %s into %s", saved, buffer_id, target.name)


def _readable_blocks(
    conn: sqlite3.Connection,
    table: str,
    prio: Priority,
    names: blocks.Names,
    boots: list[tuple[object, ...]],
    highest: int,
) -> list[StoredReading]:
    """The readings of every block that can still be read and decoded; a broken one is skipped."""

    def boot_of(seq: int) -> str:
        found = [str(b) for first, b in boots if isinstance(first, int) and first <= seq]
        return found[-1] if found else "unknown"

    out: list[StoredReading] = []
    for first, data in _readable_rows(conn, table, 0, highest, columns="first_seq, data", key="first_seq"):
        try:
            out.extend(blocks.decode_block(data, prio, names, boot_of))  # type: ignore[arg-type]
        except blocks.BlockError as exc:
            log.error("block %s of %s cannot be decoded (%s); skipped", first, table, exc)
    return out


def _readable_rows(
    conn: sqlite3.Connection,
    table: str,
    after: int,
    highest: int,
    *,
    columns: str = "seq, ts_ms, series, value, flags",
    key: str = "seq",
) -> list[Row]:
    """Rows with ``key`` above ``after``, skipping the ranges that sit in broken pages.

    The highest number may itself be unreadable, so the scan goes on in chunks until a
    long run of chunks past the highest known number holds nothing.
    """
    select = f"SELECT {columns} FROM {table}"
    try:
        return conn.execute(f"{select} WHERE {key} > ? ORDER BY {key}", (after,)).fetchall()
    except sqlite3.Error:
        pass
    out: list[Row] = []

    def scan(lo: int, hi: int) -> int:
        """Rows found in [lo, hi], or -1 when none of it could be read."""
        try:
            rows = conn.execute(f"{select} WHERE {key} BETWEEN ? AND ? ORDER BY {key}", (lo, hi)).fetchall()
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
