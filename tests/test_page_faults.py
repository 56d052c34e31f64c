"""A fault a device reports of itself (a heater fault bit) degrades it on the page, and clears with it;
values come with the profile's label, precision and units as people write them."""

from __future__ import annotations

from pathlib import Path

from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.modbus_units import VisibilityUnit
from tests.helpers import wait_until
from tests.test_roadside_site import _status, running_site
from tests.webclient import logged_in


async def test_a_set_fault_point_degrades_its_device_with_the_fault_as_reason_until_it_clears(
    tmp_path: Path, ingest: IngestServer
) -> None:
    async with running_site(tmp_path, ingest) as (agent, site):
        vis = agent.live.devices["vis-01"]
        unit_id = next(d.unit_id for d in agent.site.devices if d.id == "vis-01")
        sensor = site.rtu.units[unit_id]
        assert isinstance(sensor, VisibilityUnit)
        await wait_until(lambda: vis.state.value == "online", 20, "vis-01 online")
        sensor.status_bits = 0b010  # bit 1: heater fault
        await wait_until(lambda: vis.state.value == "degraded", 20, "vis-01 degraded by its fault")
        assert vis.reason == "fault: heater_fault"
        status = await _status(agent)
        device = next(d for d in status["devices"] if d["id"] == "vis-01")
        points = {p["name"]: p for p in device["points"]}
        assert points["heater_fault"]["fault_set"] and points["heater_fault"]["title"] == "Heater fault"
        assert not points["sensor_fault"]["fault_set"]
        assert points["temperature"]["unit"] == "Cel" and points["temperature"]["unit_shown"] == "°C"
        assert points["temperature"]["precision"] == 1
        sensor.status_bits = 0
        await wait_until(lambda: vis.state.value == "online", 20, "vis-01 online once the fault clears")
        assert vis.reason == ""


async def test_a_technician_test_write_is_read_back_and_audited(tmp_path: Path, ingest: IngestServer) -> None:
    async with running_site(tmp_path, ingest) as (agent, site):
        lamp = agent.live.devices["lamp-02"]
        await wait_until(lambda: lamp.state.value == "online", 20, "lamp online")
        assert agent.web_url is not None
        async with logged_in(agent.web_url, agent.site.gateway.state_dir) as page:
            code, answer = await page.post("/api/devices/lamp-02/write", {"point": "dim_level", "value": 55})
            assert code == 200 and answer["result"] == "ok: wrote 55 %", answer
            assert answer["read_back"]["value"] == 55 and answer["read_back"]["name"] == "dim_level"
            assert site.rtu.units[32].tables["holding"][0] == 55
            code, answer = await page.post("/api/devices/lamp-02/write", {"point": "dim_level", "value": 150})
            assert answer["result"].startswith("refused:") and "maximum" in answer["result"]
            code, audit = await page.get("/api/audit")
        actions = [(e["action"], e["target"], e["result"].split(":")[0]) for e in audit["entries"]]
        assert ("write", "lamp-02.dim_level", "ok") in actions
        assert ("write", "lamp-02.dim_level", "refused") in actions
