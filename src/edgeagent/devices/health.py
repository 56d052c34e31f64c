"""One device's health as everyone else sees it: online, degraded or offline, and why.

Every runner (the bus scheduler, the radar reader, the BLE listener) reports through
this, so every device follows the same rules: a failure makes it degraded,
``offline_after`` failures in a row (or silence past its stale limit) make it offline,
one success brings it back. A state change is logged once; failures in between only
update the reason shown on the status page, so a dead sensor cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from edgeagent.live import DeviceLive, DeviceState, PointValue
from edgeagent.model import Quality, Reading

log = logging.getLogger("edgeagent.devices")


# (device id, new state, previous state, reason): told once per change, never per failed poll.
StateSink = Callable[[str, str, str, str], None]


class Health:
    """Keeps ``live`` (the device's entry on the status page), the log and ``on_state`` in step."""

    def __init__(self, live: DeviceLive, *, offline_after: int, on_state: StateSink | None = None) -> None:
        self.live = live
        self.offline_after = offline_after
        self.failures = 0
        self.on_state = on_state

    @property
    def offline(self) -> bool:
        return self.live.state == DeviceState.OFFLINE

    def succeeded(self, readings: Sequence[Reading], labels: Mapping[str, str] | None = None) -> None:
        """A poll (or an accepted frame or advertisement) brought these readings.

        A point the profile marks as a fault (a lamp failure, an open door) that is set
        keeps the device degraded, with the fault as the reason, though it answers.
        """
        live = self.live
        now = time.time()
        points = live.points
        for r in readings:
            label = labels.get(r.point) if labels else None
            pv = points.get(r.point)
            if pv is None:
                points[r.point] = PointValue(r.value, r.unit, r.ts, r.quality, label)
            else:
                pv.value, pv.unit, pv.ts, pv.quality, pv.label = r.value, r.unit, r.ts, r.quality, label
        live.last_ok_ts = now
        live.polls_ok += 1
        self.failures = 0
        faults = sorted(name for name in live.fault_points if _is_set(points.get(name)))
        state, reason = (DeviceState.DEGRADED, f"fault: {', '.join(faults)}") if faults else (DeviceState.ONLINE, "")
        previous = live.state
        if state != previous:
            if faults:
                log.warning("device %s reports a fault: %s", live.id, ", ".join(faults))
            elif previous in (DeviceState.OFFLINE, DeviceState.DEGRADED):
                log.info("device %s is back online (was %s: %s)", live.id, previous.value, live.reason)
            live.state_since = now
        live.state, live.reason = state, reason
        if state != previous and self.on_state is not None:
            self.on_state(live.id, state.value, previous.value, reason)

    def failed(self, reason: str) -> DeviceState:
        """A poll failed: degraded now, offline once failures in a row reach the limit."""
        self.failures += 1
        self.live.polls_failed += 1
        self.live.errors.append((time.time(), reason))
        new_state = DeviceState.OFFLINE if self.failures >= self.offline_after else DeviceState.DEGRADED
        self._set(new_state, reason)
        return new_state

    def went_offline(self, reason: str) -> None:
        """Offline at once: the device fell silent past its limit, or its bus cannot be reached."""
        self.failures = max(self.failures, self.offline_after)
        self.live.errors.append((time.time(), reason))
        self._set(DeviceState.OFFLINE, reason)

    def _set(self, state: DeviceState, reason: str) -> None:
        live = self.live
        previous = live.state
        if state != previous:
            level = logging.WARNING if state == DeviceState.OFFLINE else logging.INFO
            log.log(level, "device %s is %s: %s", live.id, state.value, reason)
            live.state_since = time.time()
            # Values shown from before the trouble are no longer vouched for.
            for pv in live.points.values():
                if pv.quality == Quality.GOOD:
                    pv.quality = Quality.UNCERTAIN
        live.state, live.reason = state, reason
        if state != previous and self.on_state is not None:
            self.on_state(live.id, state.value, previous.value, reason)


def _is_set(pv: PointValue | None) -> bool:
    return pv is not None and isinstance(pv.value, int | float) and pv.value != 0
