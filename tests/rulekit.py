"""Rules for tests: a small site to bind them to, and an engine whose outputs are recorded."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Any

from edgeagent.config import SiteConfig, parse_config, profiles_for
from edgeagent.rules.bind import BoundRule, bind_rules
from edgeagent.rules.engine import Engine
from edgeagent.rules.model import Event, Intent, Transition

T0 = 1_800_000_000.0  # a plausible wall time for virtual clocks


def _device(dev_id: str, profile: str, unit: int, tags: list[str]) -> dict[str, Any]:
    return {
        "id": dev_id,
        "profile": profile,
        "bus": "field",
        "unit_id": unit,
        "poll_interval_s": 1.0,
        "tags": tags,
        "asset": {"location": "test bench", "owner": "tests"},
    }


DEVICES = [
    _device("wl-01", "generic_water_level", 1, ["underpass"]),
    _device("wl-02", "generic_water_level", 2, ["underpass"]),
    _device("vis-01", "generic_visibility_modbus", 20, ["visibility"]),
    _device("sign-01", "generic_sign_controller", 40, ["closure-sign", "speed-sign"]),
]


def site_with(rules_toml: str, *, time_zone: str | None = None) -> SiteConfig:
    gateway: dict[str, Any] = {"id": "gw-test"}
    if time_zone:
        gateway["time_zone"] = time_zone
    data: dict[str, Any] = {
        "gateway": gateway,
        "buses": [{"name": "field", "kind": "modbus_tcp", "host": "127.0.0.1", "port": 1502}],
        "devices": DEVICES,
        "rules": tomllib.loads(rules_toml)["rules"],
    }
    return parse_config(data)


def bound(rules_toml: str, *, time_zone: str | None = None) -> list[BoundRule]:
    site = site_with(rules_toml, time_zone=time_zone)
    rules, problems = bind_rules(site, profiles_for(site))
    assert not problems
    return rules


@dataclass
class Recorder:
    """What an engine said, in order."""

    out: list[Transition | Intent | Event] = field(default_factory=list)

    def engine(self, rules: list[BoundRule], now: float = T0) -> Engine:
        return Engine(
            rules, now=now, on_transition=self.out.append, on_intent=self.out.append, on_event=self.out.append
        )

    def alarms(self, what: str = "condition") -> list[tuple[float, str, str, str]]:
        """(t, rule, subject, state) of every transition of this kind."""
        return [(t.ts, t.rule, t.subject, t.state) for t in self.out if isinstance(t, Transition) and t.what == what]

    def states(self, what: str = "condition") -> list[tuple[str, str, str]]:
        return [(rule, subject, state) for _, rule, subject, state in self.alarms(what)]

    def intents(self) -> list[tuple[str, str, float | str]]:
        return [(i.rule, f"{i.device}/{i.point}", i.value) for i in self.out if isinstance(i, Intent)]
