"""The technician's page as one part: what it reads from the agent, and what it keeps of its own.

The agent hands the page a ``PageHost`` (itself): the live picture, the hub, the store,
the config and the functions that act (write a point, poll a device now). The page
keeps its own sessions and audit trail (``sessions.py``), a chart history and a ring of
recent log lines, all bounded, and starts and stops them with the status page unit.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgeagent.config import HttpUplinkConfig, MqttUplinkConfig, SiteConfig, profiles_for
from edgeagent.errors import ConfigError
from edgeagent.hub import Hub, Topic
from edgeagent.model import Priority, Reading
from edgeagent.web.auth import LoginThrottle, User, password_stamp, read_users, users_path
from edgeagent.web.history import History
from edgeagent.web.logbuf import RecentLog
from edgeagent.web.sessions import Session, SessionStore
from edgeagent.web.status import StatusFn, point_meta, status_builder
from edgeagent.web.tls import served_fingerprint

if TYPE_CHECKING:
    from edgeagent.health import Heartbeats
    from edgeagent.live import Live
    from edgeagent.reload import ConfigState
    from edgeagent.store import Store

log = logging.getLogger(__name__)

GATEWAY = "gateway"  # the device name of the gateway's own readings (agent.GATEWAY)


class PageHost(Protocol):
    """What the page needs of the agent (the agent is one)."""

    site: SiteConfig
    live: Live
    hub: Hub
    store: Store | None
    config: ConfigState
    heartbeats: Heartbeats
    runners: dict[str, Any]
    units: dict[str, Any]

    def write_point(self, device_id: str, point: str, value: float | str) -> Awaitable[str]: ...


def config_secrets(site: SiteConfig) -> list[str]:
    """Every secret the config names, so that the page can blot them out of what it shows."""
    from edgeagent.preflight import read_secret

    out: list[str] = []
    for up in site.uplinks:
        key = "token_file" if isinstance(up, HttpUplinkConfig) else "password_file"
        if isinstance(up, HttpUplinkConfig | MqttUplinkConfig) and getattr(up, key, None) is not None:
            with contextlib.suppress(ConfigError):
                out.append(read_secret(up, key))
    for dev in site.devices:
        if dev.key is not None:
            out.append(dev.key.get_secret_value())
    return out


@dataclass
class Page:
    """The page's state while it serves."""

    host: PageHost
    state_dir: Path
    tls: bool
    api_token: str | None = None
    history: History = field(default_factory=History)
    recent_log: RecentLog = field(default_factory=RecentLog)
    sessions: SessionStore | None = None
    throttle: LoginThrottle | None = None
    streams: int = 0
    stream_dropped: int = 0
    fingerprint: str | None = None
    _unlisten: Any = None
    _users: dict[str, User] = field(default_factory=dict)
    _users_key: tuple[int, int, int] | None = None

    @property
    def cfg(self) -> Any:
        return self.host.site.web

    def users(self) -> dict[str, User]:
        """Read again whenever the file changed, so ``edgeagent passwd`` takes effect without a restart."""
        path = self.users_file
        try:
            st = path.stat()
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            key = None
        if key is None or key != self._users_key:
            self._users = read_users(path) if key is not None else {}
            self._users_key = key
        return self._users

    def session_user(self, session: Session) -> User | None:
        """The session's user as the users file has them now: None once removed or given a new password."""
        user = self.users().get(session.user)
        return user if user is not None and password_stamp(user) == session.stamp else None

    @property
    def users_file(self) -> Path:
        return users_path(self.cfg.users_file, self.state_dir)

    def host_config_path(self) -> str:
        return self.host.config.file or "/etc/edgeagent/edgeagent.toml"

    def meta(self) -> dict[tuple[str, str], dict[str, Any]]:
        return point_meta(profiles_for(self.host.site))

    def status(self) -> StatusFn:
        host = self.host

        def store() -> Store:
            assert host.store is not None
            return host.store

        return status_builder(
            lambda: host.live,
            store,
            host.config,
            profiles=lambda: profiles_for(host.site),
            extra=lambda: {"tls_fingerprint": self.fingerprint, "web_tls": self.tls},
        )

    async def start(self) -> None:
        cfg = self.cfg
        self.sessions = SessionStore(self.state_dir, idle_s=cfg.session_idle_s, max_s=cfg.session_max_s)
        await self.sessions.open()
        self.throttle = LoginThrottle(cfg.login_failures_per_minute, cfg.login_pause_s)
        self.fingerprint = served_fingerprint(cfg, self.state_dir) if self.tls else None
        secrets = config_secrets(self.host.site)
        if self.api_token:
            secrets.append(self.api_token)
        self.recent_log = RecentLog(secrets)
        self.recent_log.install()
        self._unlisten = self.host.hub.listen(Topic.READINGS, self.history.listen)

    async def stop(self) -> None:
        self.recent_log.uninstall()
        if self._unlisten is not None:
            with contextlib.suppress(
                ValueError
            ):  # the hub was replaced (a restart of every part): nothing to take back
                self._unlisten()
        if self.sessions is not None:
            await self.sessions.close()

    def audit(self, user: str, client: str, action: str, target: str, result: str) -> None:
        """Record a state-changing request locally and send it upstream as an event."""
        if self.sessions is not None:
            self.sessions.audit(user, client, action, target, result)
        log.info("audit: %s %s %s from %s: %s", user, action, target or "-", client, result)
        reason = f"user={user} client={client} target={target or '-'} result={result}"
        reading = Reading(GATEWAY, "audit", time.time(), action, "", priority=Priority.EVENT, reason=reason[:1000])
        self.host.hub.readings(GATEWAY, [reading])

    def healthy(self) -> bool:
        return not self.host.heartbeats.stale()
