"""Latest values and health, kept in memory for the status page and the API.

Pollers and sync workers write here; the web layer only reads. Nothing here touches
the store or a bus.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeagent.model import Quality


class DeviceState(enum.StrEnum):
    UNKNOWN = "unknown"  # not polled yet
    ONLINE = "online"
    DEGRADED = "degraded"  # failing, but not for long enough to call it offline
    OFFLINE = "offline"


@dataclass(slots=True)
class PointValue:
    value: float | None
    unit: str
    ts: float
    quality: Quality
    label: str | None = None  # what an enum code means ("schedule"), for people


@dataclass(slots=True)
class DeviceLive:
    """What is known now about one device."""

    id: str
    profile: str
    bus: str
    asset: dict[str, object]
    state: DeviceState = DeviceState.UNKNOWN
    reason: str = ""
    state_since: float = field(default_factory=time.time)
    last_ok_ts: float | None = None
    polls_ok: int = 0
    polls_failed: int = 0
    points: dict[str, PointValue] = field(default_factory=dict)
    protocol: str = ""
    address: str = ""  # where on its bus: "unit 5", "id 1", a MAC address
    framing_errors: int = 0  # losses of sync in the byte stream (noise, cut frames)
    rejected: int = 0  # packets refused: wrong key, corrupt, plain from a keyed device
    replayed: int = 0  # packets with an old counter that were not plain repeats
    rssi_dbm: int | None = None
    fault_points: frozenset[str] = frozenset()  # points whose set value is a fault (the profile says)
    errors: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=RECENT_ERRORS))
    # The last transaction's raw frames, (ts, "tx" | "rx", hex), where the transport can tell.
    frames: list[tuple[float, str, str]] = field(default_factory=list)


RECENT_ERRORS = 10


@dataclass(slots=True)
class BusLive:
    """What is known now about one bus: a serial line, a TCP endpoint, a BLE scanner."""

    name: str
    kind: str
    target: str  # the port, host:port or adapter
    state: str = "starting"  # "ok", "down" (cannot be opened), "stalled" (BLE: silent radio)
    detail: str = ""
    state_since: float = field(default_factory=time.time)
    transactions: int = 0
    restarts: int = 0  # BLE: scanner restarts by the watchdog; Modbus TCP: reopens of a silent connection
    # Told (bus, state, detail) on each change of state: the agent points it at its hub.
    listener: Callable[[str, str, str], None] | None = None

    def set_state(self, state: str, detail: str = "") -> None:
        """Record the bus's state; ``state_since`` moves only when the state changes."""
        changed = state != self.state
        if changed:
            self.state_since = time.time()
        self.state, self.detail = state, detail
        if changed and self.listener is not None:
            self.listener(self.name, state, detail)


@dataclass(slots=True)
class UplinkLive:
    """What is known now about one upstream destination."""

    name: str
    kind: str
    target: str
    last_result: str = "not tried yet"
    last_attempt_ts: float | None = None
    last_success_ts: float | None = None
    batches_sent: int = 0
    readings_sent: int = 0
    bytes_sent: int = 0
    failures: int = 0


@dataclass(slots=True)
class Alarm:
    """One alarm of one source: raised, perhaps cleared, and how often it was raised."""

    source: str
    kind: str
    message: str
    active: bool
    raised_ts: float
    cleared_ts: float | None = None
    times: int = 1
    acked_by: str | None = None  # who acknowledged this raising of it (a new raising asks again)
    acked_ts: float | None = None
    severity: str = ""  # a rule's alarm: critical, major, minor, warning or info
    rule: str | None = None  # the rule behind it; None for the gateway's own alarms

    @property
    def id(self) -> str:
        return f"{self.source}/{self.kind}"

    @property
    def state(self) -> str:
        if not self.active:
            return "cleared"
        return "acknowledged" if self.acked_by is not None else "raised"

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "state": self.state,
            "severity": self.severity,
            "rule": self.rule,
            "source": self.source,
            "kind": self.kind,
            "message": self.message,
            "active": self.active,
            "ts": self.raised_ts,
            "cleared_ts": self.cleared_ts,
            "times": self.times,
            "acked_by": self.acked_by,
            "acked_ts": self.acked_ts,
        }


class AlarmBook:
    """The alarms the page shows: one entry per (source, kind), bounded.

    Raising an alarm that is already listed updates it (a repeat is counted, not added);
    past ``limit`` entries the oldest cleared one goes first, then the oldest of all, so
    the book cannot grow with uptime however many kinds of trouble come and go.
    """

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self._entries: dict[tuple[str, str], Alarm] = {}
        # Where an acknowledgement goes first (the agent: to the rules engine or upstream);
        # it returns True when it recorded the acknowledgement here itself.
        self.acknowledger: Callable[[str, str, str], bool] | None = None

    def raise_(
        self,
        source: str,
        kind: str,
        message: str,
        ts: float | None = None,
        *,
        severity: str = "",
        rule: str | None = None,
    ) -> Alarm:
        now = time.time() if ts is None else ts
        alarm = self._entries.pop((source, kind), None)
        if alarm is None:
            alarm = Alarm(source, kind, message, True, now, severity=severity, rule=rule)
        else:
            alarm.times += 1
            alarm.message, alarm.active, alarm.raised_ts, alarm.cleared_ts = message, True, now, None
            alarm.acked_by = alarm.acked_ts = None
            alarm.severity, alarm.rule = severity or alarm.severity, alarm.rule if rule is None else rule
        self._entries[(source, kind)] = alarm
        while len(self._entries) > self.limit:
            cleared = next((k for k, a in self._entries.items() if not a.active), None)
            del self._entries[cleared if cleared is not None else next(iter(self._entries))]
        return alarm

    def clear(self, source: str, kind: str, ts: float | None = None) -> Alarm | None:
        alarm = self._entries.get((source, kind))
        if alarm is not None and alarm.active:
            alarm.active, alarm.cleared_ts = False, time.time() if ts is None else ts
        return alarm

    def acknowledge(self, source: str, kind: str, user: str, ts: float | None = None) -> Alarm | None:
        """Someone has seen it: recorded until the alarm is raised again. None if there is no such alarm."""
        alarm = self._entries.get((source, kind))
        if alarm is not None and self.acknowledger is not None and self.acknowledger(source, kind, user):
            return alarm
        return self.mark_acknowledged(source, kind, user, ts)

    def mark_acknowledged(self, source: str, kind: str, user: str, ts: float | None = None) -> Alarm | None:
        """Record an acknowledgement (what ``acknowledge`` does once it has been routed)."""
        alarm = self._entries.get((source, kind))
        if alarm is not None:
            alarm.acked_by, alarm.acked_ts = user, time.time() if ts is None else ts
        return alarm

    def find(self, alarm_id: str) -> Alarm | None:
        """An alarm by its id, ``<source>/<kind>``."""
        source, _, kind = alarm_id.partition("/")
        return self._entries.get((source, kind))

    def active(self) -> list[Alarm]:
        return [a for a in self._entries.values() if a.active]

    def as_list(self) -> list[dict[str, object]]:
        """Oldest raised first."""
        return [a.as_dict() for a in self._entries.values()]

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> dict[str, object]:
        return self.as_list()[i]


@dataclass(slots=True)
class Live:
    """The whole agent's current picture."""

    gateway_id: str
    started_monotonic: float = field(default_factory=time.monotonic)
    devices: dict[str, DeviceLive] = field(default_factory=dict)
    uplinks: dict[str, UplinkLive] = field(default_factory=dict)
    buses: dict[str, BusLive] = field(default_factory=dict)
    alarms: AlarmBook = field(default_factory=AlarmBook)
    # The rules engine's own view (each rule's last evaluation and firing), when rules run.
    rules_status: Callable[[], dict[str, object]] | None = None

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic
