"""A small roadside site for the rules' end-to-end tests: real simulators, the real agent in-process.

A waterlogging sensor on Modbus TCP (one or two), an RS-485 line on a pty with a sign
controller and a visibility sensor, a radar on its own pty, and an ingest endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeagent.agent import Agent
from edgeagent.config import parse_config
from edgeagent.rules.unit import RulesUnit
from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.modbus_rtu import RtuBusSimulator
from edgeagent.sim.modbus_units import SignControllerUnit, VisibilityUnit
from edgeagent.sim.radar import RadarSimulator
from edgeagent.sim.water_level import WaterLevelSimulator

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
POLL_S = 0.2


@dataclass
class Sims:
    wl1: WaterLevelSimulator
    wl2: WaterLevelSimulator
    line: RtuBusSimulator
    radar: RadarSimulator
    ingest: IngestServer

    @property
    def sign(self) -> SignControllerUnit:
        unit = self.line.units[40]
        assert isinstance(unit, SignControllerUnit)
        return unit

    @property
    def vis(self) -> VisibilityUnit:
        unit = self.line.units[20]
        assert isinstance(unit, VisibilityUnit)
        return unit


@contextlib.asynccontextmanager
async def simulators() -> AsyncIterator[Sims]:
    line = RtuBusSimulator({40: SignControllerUnit(), 20: VisibilityUnit(seed=1)}, baudrate=9600, line_timing=True)
    async with (
        WaterLevelSimulator(unit_ids=[1]) as wl1,
        WaterLevelSimulator(unit_ids=[1]) as wl2,
        line,
        RadarSimulator(seed=2) as radar,
        IngestServer() as ingest,
    ):
        wl1.fixed_level_mm = wl2.fixed_level_mm = 0.0
        line.units[20].fixed_visibility_m = 10_000.0  # type: ignore[attr-defined]
        radar.vehicle_speed_m_s = 10.0
        yield Sims(wl1, wl2, line, radar, ingest)


def _device(dev_id: str, profile: str, bus: str, tags: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "id": dev_id,
        "profile": profile,
        "bus": bus,
        "tags": tags,
        "backoff_max_s": 1.0,
        "asset": {"location": "test bench", "owner": "tests"},
        **extra,
    }


def site_data(sims: Sims, state: Path, rules: str = "", include: list[str] | None = None) -> dict[str, Any]:
    """The site as a parsed config: wl-01/wl-02 (underpass), sign-01 and vis-01 on the line, radar-01."""
    reconnect = {"reconnect_min_ms": 100, "reconnect_max_ms": 500}
    data: dict[str, Any] = {
        "gateway": {"id": "gw-test", "state_dir": str(state)},
        "store": {"commit_interval_ms": 100},
        "web": {"enabled": False},
        "buses": [
            {"name": "flood1", "kind": "modbus_tcp", "host": "127.0.0.1", "port": sims.wl1.port, "timeout_ms": 300}
            | reconnect,
            {"name": "flood2", "kind": "modbus_tcp", "host": "127.0.0.1", "port": sims.wl2.port, "timeout_ms": 300}
            | reconnect,
            {"name": "line", "kind": "modbus_rtu", "port": sims.line.port, "timeout_ms": 300} | reconnect,
            {"name": "radar", "kind": "serial", "port": sims.radar.port, "bytesize": 8, "parity": "N", "stopbits": 1}
            | reconnect,
        ],
        "devices": [
            _device(
                "wl-01",
                "generic_water_level",
                "flood1",
                ["underpass", "waterlogging"],
                unit_id=1,
                poll_interval_s=POLL_S,
            ),
            _device(
                "wl-02",
                "generic_water_level",
                "flood2",
                ["underpass", "waterlogging"],
                unit_id=1,
                poll_interval_s=POLL_S,
            ),
            _device(
                "sign-01",
                "generic_sign_controller",
                "line",
                ["closure-sign", "speed-sign"],
                unit_id=40,
                poll_interval_s=0.5,
                offline_after_failures=1,
            ),
            _device("vis-01", "generic_visibility_modbus", "line", ["visibility"], unit_id=20, poll_interval_s=0.5),
            _device("radar-01", "ti_mmwave_radar", "radar", ["radar"], poll_interval_s=0.5),
        ],
        "uplinks": [
            {"name": "platform", "kind": "http", "url": sims.ingest.url, "retry_min_ms": 50, "retry_max_ms": 500}
        ],
        "include": include or [],
    }
    if rules:
        data["rules"] = tomllib.loads(rules)["rules"]
    return data


@contextlib.asynccontextmanager
async def running_agent(data: dict[str, Any]) -> AsyncIterator[Agent]:
    site = parse_config(json.loads(json.dumps(data)), file="site.toml", base=CONFIG_DIR)
    agent = Agent(site)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="agent-under-test")
    ready = asyncio.create_task(agent.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


def rules_of(agent: Agent) -> RulesUnit:
    unit = agent.units["rules"]
    assert isinstance(unit, RulesUnit)
    return unit


def alarm_records(ingest: IngestServer, name: str) -> list[dict[str, Any]]:
    """The upstream records of one alarm (``<device>/<kind>``), in sequence order."""
    return [rec for _, rec in sorted(ingest.records.items(), key=lambda kv: kv[0][2]) if rec["n"] == f"gw-test/{name}"]


def book_states(agent: Agent) -> dict[str, str]:
    return {str(a["id"]): str(a["state"]) for a in agent.live.alarms.as_list()}


def to_toml(data: dict[str, Any], rules: str = "") -> str:
    """The site data as a TOML file (scalars, lists, tables of scalars; nested tables inline), and rules."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    out = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict | list) or k == "include"]
    for key, table in data.items():
        if isinstance(table, dict):
            out += [f"\n[{key}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    for key, items in data.items():
        if isinstance(items, list) and key not in ("include", "rules"):
            for item in items:
                out += [f"\n[[{key}]]", *(f"{k} = {value(v)}" for k, v in item.items())]
    return "\n".join(out) + "\n" + rules
