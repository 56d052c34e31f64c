"""A fleet push as an integrator meets it: publish a bundle, watch it applied, the devices never miss a beat.

Real parts throughout: Mosquitto on loopback, an aiohttp server for the HTTP channel,
real ``edgeagent run`` processes polling a real Modbus server, a real ingest receiver
that keeps each reading once.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from edgeagent.fleet.slots import LAST_GOOD, MARKER
from edgeagent.reload import config_hash
from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.fleetkit import (
    INTERVAL_S,
    FleetAgent,
    Reports,
    bundle,
    device,
    events,
    gateway_config,
    gateway_topic,
    group_topic,
    largest_gap,
    payload,
    publish,
    signers,
    times,
    write_trust,
)
from tests.helpers import api_status, api_token_line, free_port, wait_until
from tests.mosquitto import Mosquitto

GW = "gw-a"


async def test_a_group_push_then_a_gateway_push_are_applied_and_reported_without_a_gap(tmp_path: Path) -> None:
    key = signers(1)
    trust = write_trust(tmp_path / "trust.json", key)
    async with (
        Mosquitto(tmp_path / "broker") as broker,
        WaterLevelSimulator(unit_ids=[1, 2]) as sim,
        IngestServer() as ingest,
        Reports(broker.port) as reports,
    ):
        config = tmp_path / "site.toml"
        web_port = free_port()
        web = f"port = {web_port}\n{api_token_line(tmp_path / 'state')}"
        local = payload(sim.port, ingest.url, device("wl-01", 1), web=web)
        config.write_text(
            gateway_config(
                gateway=GW,
                state_dir=tmp_path / "state",
                trust_file=trust,
                site=local,
                broker_port=broker.port,
                groups=["district-7"],
            )
        )
        agent = FleetAgent(config, tmp_path)
        await agent.start()
        try:
            await agent.wait_ready()
            await reports.wait(GW, lambda d: d["running_version"] == 0, "the first report (local config)")
            await wait_until(lambda: len(times(ingest, GW, "wl-01/water_level")) >= 10, 15, "wl-01 polling")

            # A group push adds wl-02; wl-01 is untouched.
            v1 = payload(sim.port, ingest.url, device("wl-01", 1) + device("wl-02", 2), web=web)
            await publish(broker.port, group_topic("district-7"), bundle(v1, 1, key, groups=["district-7"]))
            report = await reports.outcome(GW, 1, "applied")
            assert report["running_version"] == 1 and report["last"]["previous_version"] == 0
            # The status page shows the running version, the last outcome and the config's hash.
            shown = (await api_status(web_port))["gateway"]["config"]
            assert shown["fleet"]["running_version"] == 1 and shown["fleet"]["last"]["outcome"] == "applied"
            assert shown["hash"] == config_hash(v1.encode()) and shown["fleet"]["channels"]["mqtt"].startswith(
                "connected"
            )
            await wait_until(lambda: len(times(ingest, GW, "wl-02/water_level")) >= 5, 10, "wl-02 polling")
            await wait_until(lambda: events(ingest, GW, "fleet_config"), 10, "the applied event upstream")

            # Then a push to this gateway alone changes wl-02's interval.
            v2 = payload(sim.port, ingest.url, device("wl-01", 1) + device("wl-02", 2, interval_s=0.5), web=web)
            await publish(broker.port, gateway_topic(GW), bundle(v2, 2, key, gateways=[GW]))
            await reports.outcome(GW, 2, "applied")
            before = len(times(ingest, GW, "wl-01/water_level"))
            await wait_until(lambda: len(times(ingest, GW, "wl-01/water_level")) >= before + 10, 10, "wl-01 on")
            await wait_until(lambda: len(events(ingest, GW, "fleet_config")) >= 2, 10, "both events upstream")
        finally:
            code = await agent.stop()

    assert code == 0, agent.log_tail()
    # The untouched device never missed a beat across both applies.
    assert largest_gap(times(ingest, GW, "wl-01/water_level")) <= 1.5 * INTERVAL_S
    # The store path: both outcomes reached the receiver as events, with versions in the reason.
    applied = [(e["vs"], e["reason"]) for e in events(ingest, GW, "fleet_config")]
    assert [vs for vs, _ in applied] == ["applied", "applied"]
    assert applied[0][1].startswith("version 1 (running 0)") and applied[1][1].startswith("version 2 (running 1)")
    # Only what changed was restarted: the uplink and the untouched device kept running.
    changes = [e["reason"] for e in events(ingest, GW, "config_applied")]
    assert changes == ["fleet version 1: devices started: wl-02", "fleet version 2: devices changed: wl-02"], changes
    # Committed: last-good is version 2, and no apply is pending.
    state = tmp_path / "state" / "fleet"
    assert json.loads((state / LAST_GOOD).read_text())["version"] == 2
    assert not (state / MARKER).exists()


async def test_the_http_channel_polls_with_etag_and_applies_what_it_serves(tmp_path: Path) -> None:
    key = signers(1)
    trust = write_trust(tmp_path / "trust.json", key)
    served: dict[str, bytes] = {}
    answers: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        body = served["body"]
        etag = f'"{hash(body) & 0xFFFFFFFF:x}"'
        if request.headers.get("If-None-Match") == etag:
            answers.append(304)
            return web.Response(status=304, headers={"ETag": etag})
        answers.append(200)
        return web.Response(body=body, headers={"ETag": etag}, content_type="application/json")

    app = web.Application()
    app.router.add_get("/fleet/{gateway}.json", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with WaterLevelSimulator(unit_ids=[1, 2]) as sim, IngestServer() as ingest:
            local = payload(sim.port, ingest.url, device("wl-01", 1))
            served["body"] = bundle(
                payload(sim.port, ingest.url, device("wl-01", 1) + device("wl-02", 2)), 1, key, gateways=[GW]
            )
            config = tmp_path / "site.toml"
            config.write_text(
                gateway_config(
                    gateway=GW,
                    state_dir=tmp_path / "state",
                    trust_file=trust,
                    site=local,
                    http_url=f"http://127.0.0.1:{port}/fleet/{{gateway}}.json",
                )
            )
            agent = FleetAgent(config, tmp_path)
            await agent.start()
            try:
                await agent.wait_ready()
                await wait_until(lambda: len(times(ingest, GW, "wl-02/water_level")) >= 5, 20, "wl-02 polling")
                await wait_until(lambda: events(ingest, GW, "fleet_config"), 10, "the applied event upstream")
                await wait_until(lambda: 304 in answers, 10, "a poll answered 304 Not Modified")
                # A new version on the server is fetched on the next poll and applied.
                served["body"] = bundle(payload(sim.port, ingest.url, device("wl-01", 1)), 2, key, gateways=[GW])
                await wait_until(lambda: len(events(ingest, GW, "fleet_config")) >= 2, 20, "version 2 applied")
            finally:
                code = await agent.stop()
    finally:
        await runner.cleanup()
    assert code == 0, agent.log_tail()
    assert [e["vs"] for e in events(ingest, GW, "fleet_config")] == ["applied", "applied"]
    assert largest_gap(times(ingest, GW, "wl-01/water_level")) <= 1.5 * INTERVAL_S
    assert answers.count(200) == 2, answers  # one full answer per version; every other poll was a 304
