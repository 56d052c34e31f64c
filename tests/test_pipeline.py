"""End to end in one process: a real pymodbus server, the agent, a real aiohttp receiver."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from edgeagent.agent import Agent
from edgeagent.config import load_config
from edgeagent.sim.ingest import Fault, IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.helpers import API_AUTH, site_toml, wait_until


@contextlib.asynccontextmanager
async def running_agent(tmp_path: Path, **kwargs: object) -> AsyncIterator[Agent]:
    path = tmp_path / "site.toml"
    path.write_text(site_toml(state_dir=tmp_path / "state", **kwargs))  # type: ignore[arg-type]
    agent = Agent(load_config(path))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="agent-under-test")
    await asyncio.wait({task, asyncio.create_task(agent.ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


def _received(ingest: IngestServer) -> list[tuple[int, float, str, str]]:
    """Field-device readings as (seq, value, name, unit); the gateway's own events are left out."""
    return [(rec["seq"], rec["v"], rec["n"], rec["u"]) for rec in ingest.device_records()]


async def test_received_readings_are_the_served_values_in_order_without_gaps(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url, poll_interval_s=0.05):
        await wait_until(lambda: len(ingest.records) >= 60, 20, "60 readings upstream")
    received = _received(ingest)
    seqs = ingest.seqs()
    assert seqs == list(range(1, len(seqs) + 1))
    # Besides the sensor's values: the gateway's "new buffer" event and the sensor's "online".
    events = {rec["seq"]: rec["n"] for rec in ingest.records.values() if "vs" in rec}
    assert sorted(events.values()) == ["gw-test/gateway/store_created", "gw-test/wl-01/state"]
    assert [r[0] for r in received] == [s for s in seqs if s not in events]
    # One poll is one request; the n-th reading is the n-th value the server handed out.
    served_mm = [mm for _, mm in sensor.served]
    assert [r[1] for r in received] == served_mm[: len(received)]
    assert {r[2] for r in received} == {"gw-test/wl-01/water_level"}
    assert {r[3] for r in received} == {"mm"}
    assert len(set(served_mm)) > 5, "the simulated level should vary"
    assert ingest.arrival_order == seqs, "batches arrive in sequence order"
    assert sensor.forbidden_reads == []


async def test_status_api_reports_device_store_and_uplink(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url) as agent:
        await wait_until(lambda: len(ingest.records) >= 5, 10, "first readings upstream")
        async with (
            aiohttp.ClientSession(headers=API_AUTH) as http,
            http.get(f"{agent.web_url}api/status") as resp,
        ):
            assert resp.status == 200
            status = await resp.json()
        async with aiohttp.ClientSession() as http, http.get(f"{agent.web_url}login") as resp:
            page = await resp.text()
            assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert "<title>edgeagent · log in</title>" in page
    assert status["gateway"]["id"] == "gw-test"
    (device,) = status["devices"]
    assert device["id"] == "wl-01" and device["state"] == "online"
    (point,) = device["points"]
    assert point["name"] == "water_level" and point["unit"] == "mm" and isinstance(point["value"], float)
    assert device["asset"]["location"] == "test bench, position 1"
    assert device["asset"]["model"].startswith("Generic")
    (uplink,) = status["uplinks"]
    assert uplink["name"] == "platform" and uplink["last_result"].startswith("ok")
    assert status["store"]["last_seq"] >= 5


async def test_dead_device_goes_offline_with_reason_and_recovers(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    async with running_agent(
        tmp_path, modbus_port=sensor.port, ingest_url=ingest.url, poll_interval_s=0.1, timeout_ms=200
    ) as agent:
        live = agent.live.devices["wl-01"]
        await wait_until(lambda: live.state.value == "online", 10, "device online")
        sensor.silent = True
        await wait_until(lambda: live.state.value == "offline", 10, "device offline")
        assert "no answer" in live.reason
        sensor.silent = False
        await wait_until(lambda: live.state.value == "online", 10, "device back online")
        assert live.reason == ""


async def test_outage_loses_nothing_and_backlog_drains(tmp_path: Path, sensor: WaterLevelSimulator) -> None:
    ingest = IngestServer()
    await ingest.start()
    await ingest.stop()  # the port is known; connections to it are now refused
    async with running_agent(
        tmp_path, modbus_port=sensor.port, ingest_url=ingest.url, poll_interval_s=0.02, batch_max_readings=20
    ) as agent:
        uplink = agent.live.uplinks["platform"]
        await wait_until(lambda: uplink.failures >= 3 and agent.store.last_seq >= 60, 20, "a backlog while refused")
        assert "Connect" in uplink.last_result or "refused" in uplink.last_result.lower()
        for _ in range(4):
            ingest.faults.append(Fault("status", status=503))
        await ingest.start()
        try:
            backlog_at_recovery = agent.store.last_seq
            await wait_until(lambda: len(ingest.records) >= backlog_at_recovery + 20, 30, "the backlog to drain")
        finally:
            pass
    await ingest.stop()
    seqs = ingest.seqs()
    assert seqs == list(range(1, len(seqs) + 1)), "every sequence number exactly once, no gaps"
    assert ingest.stats.requests >= 4 + 1


async def test_retry_after_is_honoured(tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer) -> None:
    ingest.faults.append(Fault("status", status=429, retry_after="2"))
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url):
        await wait_until(lambda: ingest.stats.batches_accepted >= 1, 15, "a batch after the 429")
    # The refused request came first; the next one waited for Retry-After (2 s), not the 50 ms backoff.
    assert ingest.stats.requests >= 2
    first_ok = ingest.stats.arrival_times[0]
    assert first_ok - ingest.first_request_time >= 1.9


async def test_client_error_is_reported_once_and_data_kept(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer, caplog: object
) -> None:
    ingest.faults.append(Fault("status", status=422, body="schema mismatch: field v"))
    async with running_agent(
        tmp_path, modbus_port=sensor.port, ingest_url=ingest.url, extra="rejected_retry_s = 1.0"
    ) as agent:
        uplink = agent.live.uplinks["platform"]
        await wait_until(lambda: "refused" in uplink.last_result, 10, "the refusal")
        assert "HTTP 422: schema mismatch: field v" in uplink.last_result
        await wait_until(lambda: ingest.stats.batches_accepted >= 1, 10, "delivery after the slow retry")
    assert ingest.seqs()[0] == 1, "the refused batch was kept and delivered later"
