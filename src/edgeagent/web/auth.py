"""Who may log in to the status page: users with salted scrypt hashes, and a throttle on guessing.

The users file holds one line per user, ``name:role:$scrypt$ln=14,r=8,p=1$<salt>$<hash>``
(a PHC-style string, so the algorithm can change later), and is private (0600). There is
no default user and no default password: with no user, nobody gets in, and the login page
says how to make one (``edgeagent passwd``).

Failed logins are throttled per client address and per user name with a counter that
decays (``login_failures_per_minute`` drain away each minute): past the limit, every
attempt, right or wrong, is refused for a pause that doubles with each further strike,
capped at ``MAX_PAUSE_S``; never a permanent ban, which would lock the service port out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["viewer", "technician"]
ROLES: tuple[Role, ...] = ("viewer", "technician")
USERS_FILE = "web-users"
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
SCRYPT_LOG_N = 14
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
MAX_PAUSE_S = 900.0
THROTTLE_KEYS = 10_000  # clients and names remembered at most (the oldest are forgotten)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=1 << SCRYPT_LOG_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024
    )
    return f"$scrypt$ln={SCRYPT_LOG_N},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of ``password`` against a PHC string; False for any malformed one."""
    match = re.fullmatch(r"\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)", encoded)
    if match is None:
        return False
    log_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if not (10 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    want = _unb64(match.group(5))
    got = hashlib.scrypt(
        password.encode(), salt=_unb64(match.group(4)), n=1 << log_n, r=r, p=p, dklen=len(want), maxmem=256 << 20
    )
    return hmac.compare_digest(got, want)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    hash: str


def password_stamp(user: User) -> str:
    """A short digest of the user's hash: a session made with it ends when the password changes."""
    return hashlib.sha256(user.hash.encode()).hexdigest()[:16]


def users_path(users_file: Path | None, state_dir: Path) -> Path:
    return users_file if users_file is not None else state_dir / USERS_FILE


def read_users(path: Path) -> dict[str, User]:
    """The users in ``path``; none when it does not exist. Malformed lines are skipped."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    users = {}
    for line in text.splitlines():
        name, _, rest = line.strip().partition(":")
        role, _, encoded = rest.partition(":")
        if USER_NAME.match(name) and role in ROLES and encoded.startswith("$scrypt$"):
            users[name] = User(name, role, encoded)  # type: ignore[arg-type]
    return users


def set_password(path: Path, name: str, password: str, role: Role) -> bool:
    """Add or change one user (True if new); the file stays 0600 and keeps its owner."""
    if not USER_NAME.match(name):
        raise ValueError(f"user name {name!r}: letters, digits and _ . @ - only, at most 64 characters")
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise ValueError(f"a password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")
    users = read_users(path)
    new = name not in users
    users[name] = User(name, role, hash_password(password))
    body = "".join(f"{u.name}:{u.role}:{u.hash}\n" for u in users.values())
    owner = _owner_for(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    if owner is not None and os.geteuid() == 0:
        os.chown(tmp, *owner)  # root sets a password for the service user's file
    os.replace(tmp, path)
    return new


def _owner_for(path: Path) -> tuple[int, int] | None:
    """Who the file belongs to: its present owner, else the owner of its folder (the state folder)."""
    for candidate in (path, path.parent):
        try:
            st = candidate.stat()
        except OSError:
            continue
        return st.st_uid, st.st_gid
    return None


def new_secret() -> str:
    """A random secret for URLs and cookies (session ids, CSRF tokens, the demo's password)."""
    return secrets.token_urlsafe(32)


@dataclass(slots=True)
class _Count:
    failures: deque[float]
    strikes: int = 0  # pauses so far; each one doubles the next
    locked_until: float = 0.0
    last: float = 0.0


class LoginThrottle:
    """Failures per client and per user name in a sliding minute; past the limit, growing pauses.

    ``per_minute`` failures within 60 s start a pause of ``pause_s``; while the key is
    on probation (a pause ended less than ``MAX_PAUSE_S`` ago) a single failure starts
    the next, twice as long, capped at ``MAX_PAUSE_S``. Quiet for ``MAX_PAUSE_S`` forgets it all.
    """

    def __init__(self, per_minute: int, pause_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.pause_s = pause_s
        self._clock = clock
        self._counts: OrderedDict[str, _Count] = OrderedDict()

    def _get(self, key: str, now: float) -> _Count:
        count = self._counts.pop(key, None) or _Count(deque(maxlen=self.per_minute))
        if now - count.last > MAX_PAUSE_S and now >= count.locked_until:
            count.strikes = 0
            count.failures.clear()
        self._counts[key] = count
        while len(self._counts) > THROTTLE_KEYS:
            self._counts.popitem(last=False)
        return count

    def wait_s(self, *keys: str) -> float:
        """Seconds until these keys may try again (0 when they may now)."""
        now = self._clock()
        return max((max(0.0, self._get(k, now).locked_until - now) for k in keys), default=0.0)

    def failed(self, *keys: str) -> None:
        now = self._clock()
        for key in keys:
            count = self._get(key, now)
            count.last = now
            count.failures.append(now)
            burst = len(count.failures) == self.per_minute and now - count.failures[0] <= 60.0
            if burst or count.strikes:
                count.locked_until = now + min(MAX_PAUSE_S, self.pause_s * 2**count.strikes)
                count.strikes += 1
                count.failures.clear()

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._counts.pop(key, None)
