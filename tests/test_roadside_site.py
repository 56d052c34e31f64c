"""The whole roadside set in one config: eight RTU devices on one line, TCP, PWD, radar, BLE.

The agent is the production one (store, sync, status page); only the devices and the
upstream receiver are simulated, each speaking its real protocol (RS-485 at 9600 baud
line timing on a pty, Modbus TCP, serial ptys, bleak's backend seam).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgeagent.agent import Agent
from edgeagent.sim.demo import demo_config
from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.site import RoadsideSite
from tests.helpers import wait_until
from tests.webclient import logged_in

pytestmark = pytest.mark.timeout(90)


@contextlib.asynccontextmanager
async def running_site(
    tmp_path: Path, ingest: IngestServer, *, radio_available: bool = True
) -> AsyncIterator[tuple[Agent, RoadsideSite]]:
    async with RoadsideSite() as site:
        site.radio.available = radio_available
        config = demo_config(site=site, ingest_url=ingest.url, state_dir=tmp_path / "state", web_port=0)
        agent = Agent(config, ble_backend=site.ble_backend)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop), name="agent-under-test")
        await asyncio.wait({task, asyncio.create_task(agent.ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        try:
            yield agent, site
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=10)


async def _status(agent: Agent) -> dict[str, Any]:
    """/api/status as a technician logged in on the page reads it."""
    assert agent.web_url is not None
    async with logged_in(agent.web_url, agent.site.gateway.state_dir) as page:
        code, status = await page.get("/api/status")
        assert code == 200
        return status  # type: ignore[no-any-return]


async def test_every_device_of_the_roadside_set_is_live_on_the_status_page(
    tmp_path: Path, ingest: IngestServer
) -> None:
    async with running_site(tmp_path, ingest) as (agent, site):
        devices = agent.live.devices
        assert len(devices) == 15
        assert sum(1 for d in agent.site.devices if d.bus == "rs485-pole") == 9
        await wait_until(
            lambda: all(d.state.value == "online" and d.points for d in devices.values()), 20, "every device live"
        )
        first = await _status(agent)
        seen = {d["id"]: d["polls_ok"] for d in first["devices"]}
        await wait_until(lambda: all(d.polls_ok > seen[d.id] for d in devices.values()), 20, "every device again")
        second = await _status(agent)
        await wait_until(lambda: len(ingest.records) > 100, 20, "readings upstream")

    by_id = {d["id"]: d for d in second["devices"]}
    assert set(by_id) == set(devices)
    for device in by_id.values():
        assert device["state"] == "online", device
        assert device["points"], device["id"]
        assert all(p["unit"] for p in device["points"])
    # Live: every device brought new values between two looks at the page.
    assert all(by_id[i]["polls_ok"] > seen[i] for i in by_id)

    def point(device: str, name: str) -> dict[str, Any]:
        return next(p for p in by_id[device]["points"] if p["name"] == name)

    assert point("wl-01", "water_level")["unit"] == "mm"
    assert point("wl-04", "water_level")["unit"] == "mm"  # the device reports cm; converted
    assert point("vis-01", "visibility_1min")["unit"] == "m"
    assert point("lamp-01", "mode")["label"] == "schedule"
    assert point("pwd-01", "visibility_1min")["value"] > 0
    assert point("radar-01", "frames")["value"] > 0
    assert point("mh-01", "water_distance")["unit"] == "mm"
    assert point("cab-01", "humidity")["unit"] == "%RH"
    assert by_id["mh-01"]["protocol"] == "bthome" and by_id["mh-01"]["address"] == "54:48:E6:8F:80:A5"
    assert by_id["lamp-02"]["address"] == "unit 32" and by_id["lamp-02"]["asset"]["category"] == "lamp controller"
    buses = {b["name"]: b for b in second["buses"]}
    assert {b["state"] for b in buses.values()} == {"ok"}
    assert buses["rs485-pole"]["transactions"] > 8
    assert site.rtu.forbidden_reads == []


async def test_write_through_the_running_agent(tmp_path: Path, ingest: IngestServer) -> None:
    async with running_site(tmp_path, ingest) as (agent, site):
        lamp = agent.live.devices["lamp-02"]
        await wait_until(lambda: lamp.state.value == "online", 20, "lamp online")
        assert await agent.write_point("lamp-02", "dim_level", 90) == "90 %"
        await wait_until(lambda: lamp.points["dim_level"].value == 90, 5, "read back")
        assert site.rtu.units[32].tables["holding"][0] == 90


async def test_without_a_bluetooth_stack_only_the_ble_devices_are_affected(
    tmp_path: Path, ingest: IngestServer
) -> None:
    async with running_site(tmp_path, ingest, radio_available=False) as (agent, _):
        devices = agent.live.devices
        ble = {"mh-01", "mh-02", "cab-01"}
        await wait_until(
            lambda: all(d.state.value == ("offline" if d.id in ble else "online") for d in devices.values()),
            20,
            "BLE devices offline, the rest online",
        )
        status = await _status(agent)
    for device in status["devices"]:
        if device["id"] in ble:
            assert "no system D-Bus" in device["reason"]
    assert {b["name"]: b["state"] for b in status["buses"]}["ble"] == "down"
