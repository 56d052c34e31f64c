"""A device's availability reaches the city platform once per change, never once per failed poll."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.agentproc import AgentProcess
from tests.helpers import free_port, site_toml, wait_status, wait_until


def _device(status: dict[str, Any]) -> dict[str, Any]:
    return next(d for d in status["devices"] if d["id"] == "wl-01")


def _state_events(ingest: IngestServer) -> list[dict[str, Any]]:
    return sorted(
        (rec for rec in ingest.records.values() if rec["n"] == "gw-test/wl-01/state"), key=lambda rec: rec["seq"]
    )


async def test_a_device_offline_and_back_is_two_state_events_whatever_the_failed_polls(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    web = free_port()
    config = tmp_path / "site.toml"
    config.write_text(
        site_toml(
            state_dir=tmp_path / "state",
            modbus_port=sensor.port,
            ingest_url=ingest.url,
            poll_interval_s=0.05,
            timeout_ms=100,
            web_port=web,
        )
    )
    agent = AgentProcess(config)
    await agent.start(notify_dir=tmp_path)
    try:
        await agent.wait_ready()
        await wait_until(lambda: len(_state_events(ingest)) == 1, 10, "the first state event")
        assert [e["vs"] for e in _state_events(ingest)] == ["online"]

        sensor.silent = True  # the sensor dies: timeouts, degraded, offline, then probes with backoff
        offline = await wait_status(web, lambda s: _device(s)["state"] == "offline", "the device offline")
        failed_at_offline = _device(offline)["polls_failed"]
        await wait_status(web, lambda s: _device(s)["polls_failed"] >= failed_at_offline + 5, "more failed polls")
        sensor.silent = False
        await wait_status(web, lambda s: _device(s)["state"] == "online", "the device back online")
        await wait_until(lambda: len(_state_events(ingest)) >= 3, 10, "the state events upstream")
        polls_failed = _device(await wait_status(web, lambda s: True, "status"))["polls_failed"]
        code, stderr = await agent.terminate()
    finally:
        if agent.proc is not None and agent.proc.returncode is None:
            await agent.kill()
        await agent.close()
    assert code == 0, stderr
    events = _state_events(ingest)
    assert polls_failed >= failed_at_offline + 5 >= 7
    assert [e["vs"] for e in events] == ["online", "offline", "online"], events
    assert "no answer" in events[1]["reason"], events[1]
    assert "reason" not in events[2]
    assert events[1]["t"] < events[2]["t"]
