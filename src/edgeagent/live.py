"""Latest values and health, kept in memory for the status page and the API.

Pollers and sync workers write here; the web layer only reads. Nothing here touches
the store or a bus.
"""

from __future__ import annotations

import enum
import time
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

    def set_state(self, state: str, detail: str = "") -> None:
        """Record the bus's state; ``state_since`` moves only when the state changes."""
        if state != self.state:
            self.state_since = time.time()
        self.state, self.detail = state, detail


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
class Live:
    """The whole agent's current picture."""

    gateway_id: str
    started_monotonic: float = field(default_factory=time.monotonic)
    devices: dict[str, DeviceLive] = field(default_factory=dict)
    uplinks: dict[str, UplinkLive] = field(default_factory=dict)
    buses: dict[str, BusLive] = field(default_factory=dict)
    alarms: list[dict[str, object]] = field(default_factory=list)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic
