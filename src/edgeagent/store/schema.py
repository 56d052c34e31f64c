"""The buffer's tables, the steps that create them, and how a new file comes to be.

Schema steps (``PRAGMA user_version``): 1 made one row per reading in a table per class
(``readings_<class>``) with series, meta and cursors; 2 added the buffer's identity and
the boots of boot-relative readings; 3 keeps readings as compressed blocks
(``blocks_<class>``, see ``edgeagent.store.blocks``): a buffer upgraded in place has its
rows converted, in order and under their own numbers, in the step's one transaction.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from edgeagent.model import Priority

if TYPE_CHECKING:
    import sqlite_utils

TABLES: dict[Priority, str] = {
    Priority.ALARM: "readings_alarm",
    Priority.EVENT: "readings_event",
    Priority.TELEMETRY: "readings_telemetry",
}
BLOCKS: dict[Priority, str] = {
    Priority.ALARM: "blocks_alarm",
    Priority.EVENT: "blocks_event",
    Priority.TELEMETRY: "blocks_telemetry",
}
# Readings per block when rows of the old format are converted.
CONVERT_BLOCK_READINGS = 5000
FILE_MODE = 0o600
DIR_MODE = 0o700


def new_buffer_id() -> str:
    """A buffer's identity, created with it: 64 random bits as 16 hex digits."""
    return secrets.token_hex(8)


def _migrate_v1(db: sqlite_utils.Database) -> None:
    """Step 1: series, meta and cursors (and, before step 3 existed, one table per class
    with a row per reading: a new file goes on to blocks, so it no longer makes them)."""
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


def _migrate_v2(db: sqlite_utils.Database) -> None:
    """Step 2: the buffer's identity, and the boots whose readings carry boot-relative times.

    A buffer upgraded in place gets an identity here; receivers key readings on
    (gateway, buffer id, seq), so the new key can never collide with an old one.
    """
    db.execute("CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT")
    db.execute("INSERT OR IGNORE INTO info(key, value) VALUES ('buffer_id', ?)", [new_buffer_id()])
    db.execute("CREATE TABLE IF NOT EXISTS boots (first_seq INTEGER PRIMARY KEY, boot TEXT NOT NULL) STRICT")


def create_block_tables(conn: sqlite3.Connection) -> None:
    for table in BLOCKS.values():
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, "
            "count INTEGER NOT NULL, boot_timed INTEGER NOT NULL, data BLOB NOT NULL) STRICT"
        )


def _migrate_v3(db: sqlite_utils.Database) -> None:
    """Step 3: readings as compressed blocks; the rows of an older buffer become blocks.

    Rows are converted in sequence order, keeping their numbers, times, values, flags
    and series, so a backlog written by the previous format is delivered as it was.
    """
    from edgeagent.store.convert import rows_to_blocks

    conn = db.conn
    create_block_tables(conn)
    present = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for prio, table in TABLES.items():
        if table not in present:
            continue
        rows_to_blocks(conn, prio, table, BLOCKS[prio], CONVERT_BLOCK_READINGS)
        conn.execute(f"DROP TABLE {table}")
    conn.execute("DELETE FROM meta WHERE key LIKE 'row_millibytes:%'")


MIGRATIONS = [_migrate_v1, _migrate_v2, _migrate_v3]


def migrate(conn: sqlite3.Connection) -> None:
    """Run the schema steps this file has not had yet."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= len(MIGRATIONS):
        return
    # Imported only when the schema changes: it costs ~4 MB of RSS for the life of the
    # process, and a gateway restarted on an existing buffer never needs it.
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    for step, run in enumerate(MIGRATIONS[version:], start=version + 1):
        with db.atomic():
            run(db)
            conn.execute(f"PRAGMA user_version = {step}")


def ensure_dir(folder: Path) -> None:
    """The state folder, created private (0700) whatever the umask; an existing one is left as it is."""
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=DIR_MODE)
    os.chmod(folder, DIR_MODE)


def create_file(path: Path, *, last_seq: int = 0, buffer_id: str | None = None) -> None:
    """A new buffer with every table, private (0600), and whole or not there at all.

    It is built under a temporary name and renamed into place, so a crash while it is
    being made never leaves an empty file that would look like a damaged buffer.
    """
    tmp = path.with_name(f"{path.name}.new")
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{tmp}{suffix}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
    os.chmod(tmp, FILE_MODE)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        # No auto-vacuum: its pointer-map pages would be written with every page the
        # blocks take or give back, and budgets keep the file bounded (free pages are reused).
        migrate(conn)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (last_seq,))
        if buffer_id is not None:
            conn.execute("UPDATE info SET value = ? WHERE key = 'buffer_id'", (buffer_id,))
    finally:
        conn.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
