"""Login sessions and the audit trail, in a small SQLite file of their own in the state folder.

The buffer is the store's and holds readings; sessions and audit lines are the page's,
so they live beside it in ``web.sqlite`` (0600), written by one thread. A session is kept
under the SHA-256 of its id: the file never holds an id that could be replayed as a
cookie. Sessions survive a restart of the agent (a technician mid-visit stays logged in)
and end after ``idle_s`` without a request or ``max_s`` after the login, whichever is
first. The audit trail keeps the last ``AUDIT_KEPT`` state-changing requests.

Lookups are answered from memory; writes go to the file's thread, so a request never
waits for the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeagent.web.auth import new_secret

DB_FILE = "web.sqlite"
AUDIT_KEPT = 1000
TOUCH_EVERY_S = 60.0  # last-seen times are written at most this often per session

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY, user TEXT NOT NULL, role TEXT NOT NULL, csrf TEXT NOT NULL,
    created REAL NOT NULL, last_seen REAL NOT NULL, stamp TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, user TEXT NOT NULL, client TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, result TEXT NOT NULL) STRICT;
"""


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(slots=True)
class Session:
    user: str
    role: str
    csrf: str
    created: float
    last_seen: float
    stamp: str = ""  # which password the login was made with: a new one ends the session
    written: float = 0.0


class SessionStore:
    """Sessions by (hashed) id with idle and absolute expiry, and the audit trail."""

    def __init__(self, state_dir: Path, *, idle_s: float, max_s: float) -> None:
        self.path = state_dir / DB_FILE
        self.idle_s = idle_s
        self.max_s = max_s
        self._sessions: dict[str, Session] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-sessions")
        self._db: sqlite3.Connection | None = None

    # The file's own thread ---------------------------------------------------------

    def _open(self) -> list[tuple[Any, ...]]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.executescript(_SCHEMA)
        self._db = db
        return db.execute("SELECT id_hash, user, role, csrf, created, last_seen, stamp FROM sessions").fetchall()

    def _run(self, sql: str, args: tuple[Any, ...]) -> None:
        assert self._db is not None
        self._db.execute(sql, args)

    def _audit_rows(self, limit: int) -> list[tuple[Any, ...]]:
        assert self._db is not None
        return self._db.execute(
            "SELECT ts, user, client, action, target, result FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _write(self, sql: str, *args: Any) -> None:
        self._pool.submit(self._run, sql, args)

    # The loop's side -----------------------------------------------------------------

    async def open(self) -> None:
        now = time.time()
        for id_hash, user, role, csrf, created, last_seen, stamp in await self._call(self._open):
            session = Session(user, role, csrf, created, last_seen, stamp, last_seen)
            if self._alive(session, now):
                self._sessions[id_hash] = session
        self._write("DELETE FROM sessions WHERE created < ? OR last_seen < ?", now - self.max_s, now - self.idle_s)

    async def close(self) -> None:
        for id_hash, s in self._sessions.items():
            if s.last_seen > s.written:
                self._write("UPDATE sessions SET last_seen = ? WHERE id_hash = ?", s.last_seen, id_hash)
        if self._db is not None:
            await self._call(self._db.close)
        self._pool.shutdown(wait=True)

    def _alive(self, s: Session, now: float) -> bool:
        return now - s.last_seen < self.idle_s and now - s.created < self.max_s

    def create(self, user: str, role: str, stamp: str = "") -> tuple[str, Session]:
        """A new session with a fresh random id (a login always gets a new one)."""
        session_id = new_secret()
        now = time.time()
        session = Session(user, role, new_secret(), now, now, stamp, now)
        self._sessions[_hash(session_id)] = session
        self._write(
            "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
            _hash(session_id),
            user,
            role,
            session.csrf,
            now,
            now,
            stamp,
        )
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, its last-seen time moved on; None if none or expired."""
        if not session_id:
            return None
        key = _hash(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = time.time()
        if not self._alive(session, now):
            self.drop(session_id)
            return None
        session.last_seen = now
        if now - session.written >= TOUCH_EVERY_S:
            session.written = now
            self._write("UPDATE sessions SET last_seen = ? WHERE id_hash = ?", now, key)
        return session

    def drop(self, session_id: str) -> None:
        key = _hash(session_id)
        if self._sessions.pop(key, None) is not None:
            self._write("DELETE FROM sessions WHERE id_hash = ?", key)

    def drop_user(self, user: str) -> None:
        for key in [k for k, s in self._sessions.items() if s.user == user]:
            del self._sessions[key]
            self._write("DELETE FROM sessions WHERE id_hash = ?", key)

    def __len__(self) -> int:
        return len(self._sessions)

    def audit(self, user: str, client: str, action: str, target: str, result: str) -> None:
        self._write(
            "INSERT INTO audit (ts, user, client, action, target, result) VALUES (?, ?, ?, ?, ?, ?)",
            time.time(),
            user,
            client,
            action,
            target,
            result,
        )
        self._write("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?", AUDIT_KEPT)

    async def recent_audit(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self._call(self._audit_rows, limit)
        keys = ("ts", "user", "client", "action", "target", "result")
        return [dict(zip(keys, row, strict=True)) for row in rows]
