"""What a reload changes: the difference between the running config and the new one.

The plan is made before anything is touched, from the two validated configs alone, so
applying it is a short list of stops, swaps and starts. A bus whose own settings stay
and which is polled by the scheduler keeps running: its added, changed and removed
devices are swapped in under it, so the devices that did not change keep their rhythm.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from edgeagent.config import BleBus, ModbusRtuBus, ModbusTcpBus, SerialBus, SiteConfig, profiles_for
from edgeagent.profiles import PwdProfile


def config_hash(data: bytes) -> str:
    """The short name of a config's exact bytes, as logs, the page and the upstream see it."""
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


@dataclass(slots=True)
class ConfigState:
    """The config running now and the outcome of the last attempt to change it."""

    file: str | None = None
    hash: str | None = None  # of the config running now
    outcome: str = "applied"  # of the last attempt: "applied" | "rejected"
    attempted_hash: str | None = None
    detail: str = ""
    ts: float = field(default_factory=time.time)
    reloads: int = 0
    fleet: dict[str, object] | None = None  # fleet pushes: running version, last outcome, channels

    def applied(self, digest: str, detail: str) -> None:
        self.hash = self.attempted_hash = digest
        self.outcome, self.detail, self.ts = "applied", detail, time.time()

    def rejected(self, digest: str, detail: str) -> None:
        self.attempted_hash = digest
        self.outcome, self.detail, self.ts = "rejected", detail, time.time()
        self.reloads += 1

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "hash": self.hash,
            "outcome": self.outcome,
            "attempted_hash": self.attempted_hash,
            "detail": self.detail,
            "ts": self.ts,
            "fleet": self.fleet,
        }


@dataclass(slots=True)
class Plan:
    restart_all: bool = False
    buses_stop: list[str] = field(default_factory=list)  # stopped (gone, or restarted)
    buses_start: list[str] = field(default_factory=list)  # started (new, or restarted)
    buses_gone: list[str] = field(default_factory=list)
    swap: list[str] = field(default_factory=list)  # buses that keep running with a new device list
    devices_new: set[str] = field(default_factory=set)  # new or changed: a fresh live entry
    devices_gone: set[str] = field(default_factory=set)
    devices_kept: set[str] = field(default_factory=set)  # untouched on a swapped bus
    uplinks_stop: list[str] = field(default_factory=list)
    uplinks_start: list[str] = field(default_factory=list)
    web_restart: bool = False
    store_changed: bool = False
    rules_changed: bool = False  # rules to bind again: only those whose definition changed restart
    rules_restarted: list[str] = field(default_factory=list)  # filled in as the plan is applied

    def describe(self) -> str:
        parts = []
        added = sorted(self.devices_new - self.devices_gone)
        if added:
            parts.append(f"devices started: {', '.join(added)}")
        gone = sorted(self.devices_gone - self.devices_new)
        if gone:
            parts.append(f"devices stopped: {', '.join(gone)}")
        changed = sorted(self.devices_new & self.devices_gone)
        if changed:
            parts.append(f"devices changed: {', '.join(changed)}")
        restarted = sorted(set(self.buses_stop) & set(self.buses_start))
        if restarted:
            parts.append(f"buses restarted: {', '.join(restarted)}")
        if self.uplinks_start or self.uplinks_stop:
            parts.append(f"uplinks restarted: {', '.join(sorted({*self.uplinks_start, *self.uplinks_stop}))}")
        if self.web_restart:
            parts.append("status page restarted")
        if self.store_changed:
            parts.append("store settings changed")
        if self.rules_restarted:
            parts.append(f"rules restarted: {', '.join(sorted(self.rules_restarted))}")
        return "; ".join(parts) or "nothing changed"

    def __str__(self) -> str:
        return self.describe()


def _devices_on(site: SiteConfig, bus: str) -> dict[str, object]:
    profiles = profiles_for(site)
    return {d.id: (d, profiles[d.profile]) for d in site.devices if d.bus == bus}


def _swappable(bus: object, old: dict[str, object], new: dict[str, object]) -> bool:
    """Can this bus take its new device list without a restart? Only a polled one can.

    A Modbus TCP client's timeout is its slowest device's, so a change to that waits for
    a restart; a PWD line's framing comes from its devices' profiles, so it must not move.
    """
    if isinstance(bus, BleBus) or not new:
        return False
    if isinstance(bus, SerialBus):
        return all(isinstance(p, PwdProfile) for _, p in (*old.values(), *new.values()))  # type: ignore[misc]
    if isinstance(bus, ModbusTcpBus | ModbusRtuBus):

        def slowest(devs: dict[str, object]) -> int:
            return max((d.timeout_ms or 0 for d, _ in devs.values()), default=0)  # type: ignore[attr-defined]

        return slowest(old) == slowest(new)
    return False


def plan_reload(old: SiteConfig, new: SiteConfig) -> Plan:
    plan = Plan()
    if old.gateway != new.gateway:
        plan.restart_all = True
        return plan
    old_buses = {b.name: b for b in old.buses}
    new_buses = {b.name: b for b in new.buses}
    for name in old_buses.keys() | new_buses.keys():
        before = _devices_on(old, name) if name in old_buses else {}
        after = _devices_on(new, name) if name in new_buses else {}
        changed = {d for d in before.keys() & after.keys() if before[d] != after[d]}
        plan.devices_gone |= (before.keys() - after.keys()) | changed
        plan.devices_new |= (after.keys() - before.keys()) | changed
        if name not in new_buses:
            plan.buses_stop.append(name)
            plan.buses_gone.append(name)
            continue
        if name not in old_buses:
            plan.buses_start.append(name)
            continue
        if before == after and old_buses[name] == new_buses[name]:
            continue
        if old_buses[name] == new_buses[name] and before and _swappable(new_buses[name], before, after):
            plan.swap.append(name)
            plan.devices_kept |= {d for d in before.keys() & after.keys() if d not in changed}
        else:
            if before:
                plan.buses_stop.append(name)
            plan.buses_start.append(name)
    from edgeagent.agent import destination_filters

    old_filters, new_filters = destination_filters(old), destination_filters(new)
    old_ups = {u.name: u for u in old.uplinks}
    new_ups = {u.name: u for u in new.uplinks}
    for name in old_ups.keys() | new_ups.keys():
        same = (
            name in old_ups
            and name in new_ups
            and old_ups[name] == new_ups[name]
            and old_filters[name] == new_filters[name]
        )
        if same:
            continue
        if name in old_ups:
            plan.uplinks_stop.append(name)
        if name in new_ups:
            plan.uplinks_start.append(name)
    plan.web_restart = old.web != new.web
    plan.store_changed = old.store != new.store
    # Rules are bound to devices (tags, points, poll intervals): the rules unit compares each one.
    plan.rules_changed = bool(old.rules or new.rules)
    return plan
