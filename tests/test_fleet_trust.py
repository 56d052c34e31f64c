"""Whom a gateway believes, over time, and a push to a whole group watched with ``edgeagent fleet status``.

Key rotation: a trust bundle signed by the current threshold moves the epoch up; the
retired key is refused from then on (also after a restart), a lower or equal epoch is
never accepted, and 2-of-3 refuses a bundle with one signature. A config signed by the
new keys that arrives before the trust bundle is decided again once the trust has
turned. Then five real agents with their own gateway ids take one group push made,
pushed and watched with the integrator's commands.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from edgeagent.sim.ingest import IngestServer
from tests.fleetkit import (
    ROOT,
    FleetAgent,
    Reports,
    bundle,
    gateway_config,
    gateway_topic,
    group_topic,
    payload,
    publish,
    signers,
    trust_of,
    write_trust,
)
from tests.helpers import wait_until
from tests.mosquitto import Mosquitto

GW = "gw-t"


async def test_a_trust_bundle_rotates_keys_and_the_retired_key_is_refused(tmp_path: Path) -> None:
    k1, k2, k3, k4 = signers(4)
    trust = write_trust(tmp_path / "trust.json", [k1])
    async with Mosquitto(tmp_path / "broker") as broker, IngestServer() as ingest, Reports(broker.port) as reports:
        config = tmp_path / "site.toml"
        config.write_text(
            gateway_config(
                gateway=GW,
                state_dir=tmp_path / "state",
                trust_file=trust,
                site=payload(None, ingest.url),
                broker_port=broker.port,
                groups=["east"],
            )
        )
        agent = FleetAgent(config, tmp_path)
        await agent.start()

        async def decided(topic: str, raw: bytes, version: int, outcome: str, code: str | None = None) -> dict:
            mark = reports.mark()
            await publish(broker.port, topic, raw)
            return await reports.outcome(GW, version, outcome, code, after=mark)

        def site(n: int) -> str:
            return payload(None, ingest.url, extra=f"# config {n}\n")

        try:
            await agent.wait_ready()
            cfg, tr = gateway_topic(GW), gateway_topic(GW, "trust")
            await decided(cfg, bundle(site(1), 1, [k1], gateways=[GW]), 1, "applied")
            # A config signed by the coming keys arrives first (on the group's topic): refused for now.
            early = bundle(site(2), 2, [k2, k3], groups=["east"])
            await decided(group_topic("east"), early, 2, "rejected", "untrusted_key")
            # Epoch 2: keys 2, 3 and 4, two of them needed; signed by the current trust (key 1).
            epoch2 = trust_of([k2, k3, k4], threshold=2, epoch=2).to_json()
            mark = reports.mark()
            await publish(broker.port, tr, bundle(epoch2, 2, [k1], gateways=[GW], kind="trust"))
            report = await reports.wait(GW, lambda d: (d["last"] or {}).get("kind") == "trust", "epoch 2", after=mark)
            assert report["last"]["outcome"] == "applied" and report["epoch"] == 2
            # The early config now verifies and is applied without being sent again.
            report = await reports.wait(GW, lambda d: d["running_version"] == 2, "version 2 running", after=mark)
            assert report["last"] == {**report["last"], "kind": "config", "outcome": "applied", "version": 2}
            # The retired key, one signature of 2-of-3, an equal and a lower epoch: all refused.
            await decided(cfg, bundle(site(3), 3, [k1], gateways=[GW]), 3, "rejected", "untrusted_key")
            await decided(cfg, bundle(site(3), 3, [k4], gateways=[GW]), 3, "rejected", "below_threshold")
            again = trust_of([k1], epoch=2).to_json()
            await decided(tr, bundle(again, 2, [k2, k3], gateways=[GW], kind="trust"), 2, "rejected", "not_newer")
            lower = trust_of([k1], epoch=1).to_json()
            await decided(tr, bundle(lower, 1, [k2, k3], gateways=[GW], kind="trust"), 1, "rejected", "not_newer")
            one = trust_of([k1], epoch=3).to_json()
            await decided(tr, bundle(one, 3, [k2], gateways=[GW], kind="trust"), 3, "rejected", "below_threshold")
            await decided(cfg, bundle(site(3), 3, [k3, k4], gateways=[GW]), 3, "applied")

            # The rotation survives a restart: the state folder holds the new trust.
            assert await agent.stop() == 0
            await agent.start()
            await agent.wait_ready()
            await reports.wait(GW, lambda d: d["epoch"] == 2 and d["running_version"] == 3, "epoch 2 after restart")
            await decided(cfg, bundle(site(4), 4, [k1], gateways=[GW]), 4, "rejected", "untrusted_key")
            await decided(cfg, bundle(site(4), 4, [k2, k4], gateways=[GW]), 4, "applied")
        finally:
            code = await agent.stop()
    assert code == 0, agent.log_tail()


async def _cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgeagent",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_one_group_push_reaches_every_gateway_of_the_group_and_status_shows_them_applied(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    code, out = await _cli("fleet", "keygen", "--out", str(keys))
    assert code == 0, out
    trust = tmp_path / "trust.json"
    code, out = await _cli("fleet", "trust", "--pub", str(keys / "signing.pub"), "--out", str(trust))
    assert code == 0, out
    members = [f"gw-{i:02d}" for i in range(1, 6)]
    async with Mosquitto(tmp_path / "broker") as broker, Reports(broker.port) as reports:
        agents = []
        for gw in [*members, "gw-99"]:
            config = tmp_path / f"{gw}.toml"
            config.write_text(
                gateway_config(
                    gateway=gw,
                    state_dir=tmp_path / gw,
                    trust_file=trust,
                    site=payload(None, None),
                    broker_port=broker.port,
                    groups=["roadside"] if gw != "gw-99" else ["elsewhere"],
                )
            )
            agents.append(FleetAgent(config, tmp_path))
        try:
            for agent in agents:
                await agent.start()
            for agent in agents:
                await agent.wait_ready()
            await wait_until(lambda: len(reports.latest) == 6, 20, "every gateway reporting")
            url = f"mqtt://127.0.0.1:{broker.port}"
            code, out = await _cli("fleet", "status", "--mqtt", url, "--group", "roadside")
            assert code == 0, out  # nothing pushed yet: nothing pending, nothing failed
            assert "0 applied, 0 pending, 0 failed, 5 on their local config; 5 gateways reporting" in out

            new_site = tmp_path / "roadside.toml"
            new_site.write_text(payload(None, None).replace("commit_interval_ms = 100", "commit_interval_ms = 250"))
            signed = tmp_path / "roadside-v1.json"
            code, out = await _cli(
                "fleet",
                "sign",
                str(new_site),
                "--key",
                str(keys / "signing.key"),
                "--version",
                "1",
                "--group",
                "roadside",
                "--out",
                str(signed),
            )
            assert code == 0, out
            code, out = await _cli("fleet", "verify", str(signed), "--trust", str(trust))
            assert code == 0 and out.startswith("OK"), out
            code, out = await _cli("fleet", "push", str(signed), "--mqtt", url)
            assert code == 0 and "edgeagent/groups/roadside/config/bundle" in out, out

            await wait_until(
                lambda: all(reports.latest[gw]["running_version"] == 1 for gw in members), 30, "the group applied"
            )
            code, out = await _cli("fleet", "status", "--mqtt", url, "--group", "roadside")
            assert code == 0, out
            assert "5 applied, 0 pending, 0 failed; 5 gateways reporting" in out
            rows = [line.split() for line in out.splitlines() if line.startswith("gw-")]
            assert sorted(r[0] for r in rows) == members and all(r[1:3] == ["1", "applied"] for r in rows), out
            assert reports.latest["gw-99"]["running_version"] == 0  # not in the group: untouched
        finally:
            for agent in agents:
                assert await agent.stop() == 0, agent.log_tail()
