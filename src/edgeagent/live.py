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
    alarms: list[dict[str, object]] = field(default_factory=list)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic
