"""SIGKILL at every step of an apply, and at random moments: a restart runs the old config or the new one, whole.

Each version of the config names its own probe device (``probe-v<N>`` on unit 2), so the
receiver tells which config runs: after a restart exactly one probe may poll, and it must
be the one of the version the gateway reports running. The agent kills itself at a named
step through the pipeline's test seam (``EDGEAGENT_FLEET_TEST_KILL_AT``); the random
kills come from outside, at any moment of a push.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from edgeagent.fleet.pipeline import KILL_ENV, STEPS
from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.fleetkit import (
    FleetAgent,
    Reports,
    bundle,
    device,
    gateway_config,
    gateway_topic,
    payload,
    publish,
    times,
    write_trust,
)
from tests.fleetkit import signers as make_signers
from tests.helpers import wait_until
from tests.mosquitto import Mosquitto

GW = "gw-k"
WINDOW_S = 2.0
KILLED = -9

# Where the agent dies, and what a restart must then run and report.
EXPECTED = {
    "verified": "new",  # nothing written yet: the retained bundle is applied after the restart
    "validated": "new",
    "dry_run": "new",
    "candidate_written": "new",  # a candidate without a marker is ignored and written again
    "marker_written": "interrupted",
    "applied": "interrupted",
    "healthy": "interrupted",
    "committed": "committed",  # last-good was renamed into place: the new config runs, reported applied
    "finished": "committed",
    "rolled_back": "interrupted",  # killed while undoing an unhealthy push
}


def _site(sim_port: int, ingest_url: str, version: int, *, answers: bool = True) -> str:
    probe = device(f"probe-v{version}", 2 if answers else 3, interval_s=0.3)
    return payload(sim_port, ingest_url, device("wl-01", 1) + probe)


async def _settled(reports: Reports, mark: int, version: int) -> dict:
    """The first decision on ``version`` after ``mark``: applied, or rolled back."""
    return await reports.wait(
        GW,
        lambda d: (d["last"] or {}).get("version") == version and d["last"]["outcome"] in ("applied", "rolled_back"),
        f"a decision on version {version}",
        timeout_s=30,
        after=mark,
    )


async def _only_probe_of(ingest: IngestServer, version: int, others: list[int], since: float) -> None:
    """The running config's probe polls; no other version's does (never a mix)."""
    await wait_until(
        lambda: len([t for t in times(ingest, GW, f"probe-v{version}/water_level") if t > since]) >= 3,
        15,
        f"probe-v{version} polling",
    )
    for other in others:
        late = [t for t in times(ingest, GW, f"probe-v{other}/water_level") if t > since]
        assert not late, f"probe-v{other} polls beside probe-v{version}: a mix of two configs"


@pytest.mark.timeout(420)
async def test_a_kill_at_any_step_or_moment_leaves_the_old_or_the_new_config_whole(tmp_path: Path) -> None:
    key = make_signers(1)
    trust = write_trust(tmp_path / "trust.json", key)
    rng = random.Random(12)
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
                site=_site(sim.port, ingest.url, 0),
                broker_port=broker.port,
            )
        )
        agent = FleetAgent(config, tmp_path)
        running, version, seen_versions = 0, 0, [0]
        try:
            for step in STEPS:
                version += 1
                await agent.start(env={KILL_ENV: step})
                await agent.wait_ready()
                raw = bundle(
                    _site(sim.port, ingest.url, version, answers=step != "rolled_back"), version, key, gateways=[GW]
                )
                await publish(broker.port, gateway_topic(GW), raw)
                assert await agent.wait_exit() == KILLED, f"the agent did not die at {step}: {agent.log_tail()}"
                mark = reports.mark()
                await agent.start()
                await agent.wait_ready()
                report = await _settled(reports, mark, version)
                since = time.time()
                expected = EXPECTED[step]
                if expected == "interrupted":
                    assert (report["last"]["outcome"], report["last"]["code"]) == ("rolled_back", "interrupted"), step
                    assert report["running_version"] == running, step
                else:
                    assert report["last"]["outcome"] == "applied", (step, report)
                    assert report["running_version"] == version, step
                    running = version
                seen_versions.append(version)
                await _only_probe_of(ingest, running, [v for v in seen_versions if v != running], since)
                assert await agent.stop() == 0, agent.log_tail()

            # Kills from outside, at random moments of a push (before, during or after the window).
            for _ in range(6):
                version += 1
                await agent.start()
                await agent.wait_ready()
                await publish(
                    broker.port,
                    gateway_topic(GW),
                    bundle(_site(sim.port, ingest.url, version), version, key, gateways=[GW]),
                )
                await _sleep_random(rng, WINDOW_S + 1.0)
                await agent.kill()
                mark = reports.mark()
                await agent.start()
                await agent.wait_ready()
                report = await _settled(reports, mark, version)
                since = time.time()
                if report["last"]["outcome"] == "applied":
                    running = version
                else:
                    assert report["last"]["code"] == "interrupted", report
                assert report["running_version"] == running
                seen_versions.append(version)
                await _only_probe_of(ingest, running, [v for v in seen_versions if v != running], since)
                assert await agent.stop() == 0, agent.log_tail()
        finally:
            await agent.stop()


async def _sleep_random(rng: random.Random, most_s: float) -> None:
    """A random moment to kill at: this sleep is the experiment, not an assertion's wait."""
    await asyncio.sleep(rng.uniform(0.0, most_s))
