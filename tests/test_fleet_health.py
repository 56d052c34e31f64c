"""After an apply, the gateway watches itself: a push that breaks something is undone by itself.

A new device that never answers, or an uplink the push broke, rolls the push back within
the health window and is reported ``rolled_back: health``; an uplink that was already
down is not the push's fault. A rolled-back version is never tried again, also after a
restart. A committed push survives a restart and a SIGHUP; one that expires keeps
running and says so upstream.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from edgeagent.fleet.slots import CANDIDATE, LAST_GOOD, MARKER, STATE
from edgeagent.sim.ingest import Fault, IngestServer
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
    largest_gap,
    payload,
    publish,
    signers,
    times,
    write_trust,
)
from tests.helpers import free_port, wait_until
from tests.mosquitto import Mosquitto

GW = "gw-h"
WINDOW_S = 3.0


async def test_a_device_that_never_answers_is_rolled_back_and_never_tried_again(tmp_path: Path) -> None:
    key = signers(1)
    trust = write_trust(tmp_path / "trust.json", key)
    state = tmp_path / "state" / "fleet"
    async with (
        Mosquitto(tmp_path / "broker") as broker,
        WaterLevelSimulator(unit_ids=[1, 2]) as sim,
        IngestServer() as ingest,
        Reports(broker.port) as reports,
    ):
        config = tmp_path / "site.toml"
        config.write_text(
            gateway_config(
                gateway=GW,
                state_dir=tmp_path / "state",
                trust_file=trust,
                health_window_s=WINDOW_S,
                site=payload(sim.port, ingest.url, device("wl-01", 1)),
                broker_port=broker.port,
            )
        )
        agent = FleetAgent(config, tmp_path)
        await agent.start()
        try:
            await agent.wait_ready()
            await wait_until(lambda: len(times(ingest, GW, "wl-01/water_level")) >= 10, 15, "wl-01 polling")
            # Unit 3 is not served: the new device never answers.
            v1 = payload(sim.port, ingest.url, device("wl-01", 1) + device("wl-03", 3))
            await publish(broker.port, gateway_topic(GW), bundle(v1, 1, key, gateways=[GW]))
            applying = await reports.outcome(GW, 1, "applying")
            report = await reports.outcome(GW, 1, "rolled_back", "health")
            assert report["running_version"] == 0
            assert "wl-03" in report["last"]["reason"] and f"within {WINDOW_S:g} s" in report["last"]["reason"]
            assert report["last"]["ts"] - applying["last"]["ts"] < WINDOW_S + 2.0
            assert not (state / LAST_GOOD).exists() and not (state / MARKER).exists()
            assert not (state / CANDIDATE).exists()
            assert json.loads((state / STATE).read_text())["attempted_version"] == 1

            # A restart finds the same retained bundle and does not try it again.
            assert await agent.stop() == 0
            mark = reports.mark()
            await agent.start()
            await agent.wait_ready()
            v2 = payload(sim.port, ingest.url, device("wl-01", 1) + device("wl-02", 2))
            await publish(broker.port, gateway_topic(GW), bundle(v2, 2, key, gateways=[GW]))
            await reports.outcome(GW, 2, "applied", after=mark)
            assert not [
                r
                for r in reports.seen[mark:]
                if (r["last"] or {}).get("outcome") == "applying" and r["last"]["version"] == 1
            ]

            # A committed push survives a restart, and a SIGHUP re-reads the local file's bootstrap only.
            assert await agent.stop() == 0
            await agent.start()
            await agent.wait_ready()
            before = len(times(ingest, GW, "wl-02/water_level"))
            await wait_until(
                lambda: len(times(ingest, GW, "wl-02/water_level")) >= before + 5, 10, "wl-02 after restart"
            )
            assert agent.proc is not None
            agent.proc.send_signal(signal.SIGHUP)
            await wait_until(
                lambda: any(e["reason"] == "nothing changed" for e in events(ingest, GW, "config_applied")),
                10,
                "the SIGHUP applied with nothing changed",
            )
            before = len(times(ingest, GW, "wl-02/water_level"))
            await wait_until(lambda: len(times(ingest, GW, "wl-02/water_level")) >= before + 5, 10, "wl-02 after HUP")
        finally:
            code = await agent.stop()
    assert code == 0, agent.log_tail()
    outcomes = [e["vs"] for e in events(ingest, GW, "fleet_config")]
    assert outcomes == ["rolled_back: health", "applied"], outcomes


async def test_an_uplink_already_down_does_not_roll_back_but_one_the_push_breaks_does(tmp_path: Path) -> None:
    key = signers(1)
    trust = write_trust(tmp_path / "trust.json", key)
    async with (
        Mosquitto(tmp_path / "broker") as broker,
        WaterLevelSimulator(unit_ids=[1, 2]) as sim,
        IngestServer() as ingest,
        Reports(broker.port) as reports,
    ):
        config = tmp_path / "site.toml"
        config.write_text(
            gateway_config(
                gateway=GW,
                state_dir=tmp_path / "state",
                trust_file=trust,
                health_window_s=WINDOW_S,
                site=payload(sim.port, ingest.url, device("wl-01", 1)),
                broker_port=broker.port,
            )
        )
        agent = FleetAgent(config, tmp_path)
        await agent.start()
        try:
            await agent.wait_ready()
            await wait_until(lambda: len(times(ingest, GW, "wl-01/water_level")) >= 10, 15, "wl-01 delivered")
            # The receiver fails every batch: the uplink is down before the push arrives.
            ingest.faults.extend(Fault("status", 503) for _ in range(10_000))
            failed = len([s for _, s in ingest.request_log if s == 503])
            await wait_until(lambda: sum(s == 503 for _, s in ingest.request_log) >= failed + 3, 10, "the uplink down")
            v1 = payload(sim.port, ingest.url, device("wl-01", 1) + device("wl-02", 2))
            await publish(broker.port, gateway_topic(GW), bundle(v1, 1, key, gateways=[GW]))
            report = await reports.outcome(GW, 1, "applied", timeout_s=WINDOW_S + 15)
            assert report["running_version"] == 1
            ingest.faults.clear()
            await wait_until(lambda: len(times(ingest, GW, "wl-02/water_level")) >= 5, 15, "wl-02 delivered")

            # Now the uplink delivers, and a push sends it to a port nobody listens on.
            dead = payload(sim.port, f"http://127.0.0.1:{free_port()}/ingest", device("wl-01", 1) + device("wl-02", 2))
            await publish(broker.port, gateway_topic(GW), bundle(dead, 2, key, gateways=[GW]))
            report = await reports.outcome(GW, 2, "rolled_back", "health", timeout_s=WINDOW_S + 15)
            assert report["running_version"] == 1
            assert "uplink platform delivered before the apply and not since" in report["last"]["reason"]
            before = len(times(ingest, GW, "wl-01/water_level"))
            await wait_until(lambda: len(times(ingest, GW, "wl-01/water_level")) >= before + 10, 15, "delivery again")
            await wait_until(lambda: len(events(ingest, GW, "fleet_config")) >= 2, 10, "both outcomes upstream")
        finally:
            code = await agent.stop()
    assert code == 0, agent.log_tail()
    assert [e["vs"] for e in events(ingest, GW, "fleet_config")] == ["applied", "rolled_back: health"]
    assert largest_gap(times(ingest, GW, "wl-01/water_level")) <= 1.5 * INTERVAL_S


async def test_a_running_config_that_expires_keeps_running_and_is_reported_expired(tmp_path: Path) -> None:
    key = signers(1)
    trust = write_trust(tmp_path / "trust.json", key)
    async with (
        Mosquitto(tmp_path / "broker") as broker,
        WaterLevelSimulator(unit_ids=[1, 2]) as sim,
        IngestServer() as ingest,
        Reports(broker.port) as reports,
    ):
        config = tmp_path / "site.toml"
        config.write_text(
            gateway_config(
                gateway=GW,
                state_dir=tmp_path / "state",
                trust_file=trust,
                health_window_s=WINDOW_S,
                site=payload(sim.port, ingest.url, device("wl-01", 1)),
                broker_port=broker.port,
            )
        )
        agent = FleetAgent(config, tmp_path, good_clock=True)
        await agent.start()
        try:
            await agent.wait_ready()
            v1 = payload(sim.port, ingest.url, device("wl-01", 1) + device("wl-02", 2))
            expires = int(time.time()) + 4
            await publish(broker.port, gateway_topic(GW), bundle(v1, 1, key, gateways=[GW], expires_at=expires))
            await reports.outcome(GW, 1, "applied")
            report = await reports.wait(GW, lambda d: d.get("expired") is not None, "the expiry reported", 20)
            assert report["expired"]["version"] == 1 and report["running_version"] == 1
            await wait_until(lambda: events(ingest, GW, "config_expired"), 10, "config_expired upstream")
            assert time.time() >= expires
            before = len(times(ingest, GW, "wl-02/water_level"))
            await wait_until(lambda: len(times(ingest, GW, "wl-02/water_level")) >= before + 10, 10, "wl-02 running on")
        finally:
            code = await agent.stop()
    assert code == 0, agent.log_tail()
    expired = events(ingest, GW, "config_expired")
    assert [e["vs"] for e in expired] == ["1"] and "keeps running" in expired[0]["reason"]
