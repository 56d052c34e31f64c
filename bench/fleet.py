"""Fleet pushes, measured: verify cost, publish-to-applied on one gateway, one group push to many.

1. Verify cost per bundle, in this process: envelope + Ed25519 signatures (1 and 2 of
   them) + payload digest, for a 2 KiB site, a 20 KiB site and a 500 KiB bundle; and the
   validation a gateway then runs (``compose``: the check-config functions).
2. One gateway (a real ``edgeagent run`` with one simulated Modbus device and an HTTP
   uplink, a real Mosquitto): from the publish of a bundle to the retained report saying
   ``applied`` (target: under 2 s plus the health window, which ends as soon as the
   changed device answered, the store committed and the uplink acknowledged).
3. ``--agents N`` gateways (devices-less sites, status page off) on one Mosquitto: one
   group push, time until every one has reported ``applied``; their total RSS.

Run: python bench/fleet.py [--rounds 10] [--agents 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fleetkit import (
    FleetAgent,
    Reports,
    bundle,
    device,
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

from edgeagent.config import load_config
from edgeagent.fleet.bundle import payload_of, read_bundle, verify
from edgeagent.fleet.compose import compose
from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator


def _per_call_us(fn: object, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - started) / n * 1e6


def verify_cost(folder: Path) -> None:
    keys = signers(2)
    one, two = trust_of(keys[:1]), trust_of(keys, threshold=2)
    devices = "".join(device(f"wl-{i:02d}", i % 200 + 1) for i in range(60))
    sites = {
        "2 KiB site": payload(1502, "http://127.0.0.1:1/x", device("wl-01", 1) + device("wl-02", 2)),
        "20 KiB site": payload(1502, "http://127.0.0.1:1/x", devices),
        "500 KiB bundle": payload(1502, None) + "#" + "x" * 370_000 + "\n",
    }
    print("verify cost per bundle (read + signatures + payload digest), this process:")
    for name, text in sites.items():
        for trust, signed in ((one, keys[:1]), (two, keys)):
            raw = bundle(text, 1, signed, groups=["g"])

            def check(raw: bytes = raw, trust: object = trust) -> None:
                b = read_bundle(raw)
                verify(b, trust)  # type: ignore[arg-type]
                payload_of(b)

            n = 200 if len(raw) > 100_000 else 2000
            print(f"  {name:15} {len(raw):7d} bytes, {len(signed)} signature(s): {_per_call_us(check, n):8.0f} us")
    trust_file = write_trust(folder / "trust.json", keys[:1])
    config = folder / "site.toml"
    config.write_text(
        gateway_config(
            gateway="gw-bench",
            state_dir=folder / "state",
            trust_file=trust_file,
            site=payload(None, None),
            broker_port=1883,
        )
    )
    local = load_config(config)
    for name in ("2 KiB site", "20 KiB site"):
        data = sites[name].encode()
        us = _per_call_us(lambda data=data: compose(local, data, config), 50)
        print(f"  then validated as check-config does ({name}): {us / 1000:.1f} ms")


async def one_gateway(folder: Path, rounds: int) -> None:
    keys = signers(1)
    trust = write_trust(folder / "trust.json", keys)
    async with (
        Mosquitto(folder / "broker") as broker,
        WaterLevelSimulator(unit_ids=[1, 2]) as sim,
        IngestServer() as ingest,
        Reports(broker.port) as reports,
    ):
        config = folder / "site.toml"
        config.write_text(
            gateway_config(
                gateway="gw-bench",
                state_dir=folder / "state",
                trust_file=trust,
                health_window_s=30,
                site=payload(sim.port, ingest.url, device("wl-01", 1)),
                broker_port=broker.port,
            )
        )
        agent = FleetAgent(config, folder)
        await agent.start()
        await agent.wait_ready()
        await reports.wait("gw-bench", lambda d: True, "the first report")
        totals, deciding = [], []
        try:
            for version in range(1, rounds + 1):
                # Alternately add and remove a device: each push changes something that must answer.
                devices = device("wl-01", 1) + (device("wl-02", 2) if version % 2 else "")
                raw = bundle(payload(sim.port, ingest.url, devices), version, keys, gateways=["gw-bench"])
                mark = reports.mark()
                started = time.monotonic()
                await publish(broker.port, gateway_topic("gw-bench"), raw)
                applying = await reports.outcome("gw-bench", version, "applying", after=mark)
                t_applying = time.monotonic()
                await reports.outcome("gw-bench", version, "applied", after=mark)
                totals.append(time.monotonic() - started)
                deciding.append(t_applying - started)
                del applying
        finally:
            await agent.stop()
    print(f"one gateway, {rounds} pushes, publish -> reported applied (health window included, it ends early):")
    print(f"  verified, checked and slot written (report 'applying'): median {statistics.median(deciding):.3f} s")
    print(f"  applied, healthy, committed, reported: median {statistics.median(totals):.3f} s, max {max(totals):.3f} s")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def many_gateways(folder: Path, count: int) -> None:
    keys = signers(1)
    trust = write_trust(folder / "trust.json", keys)
    async with Mosquitto(folder / "broker") as broker, Reports(broker.port) as reports:
        agents = []
        for i in range(count):
            gw = f"gw-{i:03d}"
            config = folder / f"{gw}.toml"
            config.write_text(
                gateway_config(
                    gateway=gw,
                    state_dir=folder / gw,
                    trust_file=trust,
                    site=payload(None, None),
                    broker_port=broker.port,
                    groups=["all"],
                    health_window_s=30,
                )
            )
            agents.append(FleetAgent(config, folder))
        started = time.monotonic()
        try:
            for agent in agents:
                await agent.start()
            for agent in agents:
                await agent.wait_ready(timeout_s=300)
            await wait_until(lambda: len(reports.latest) >= count, 300, "every gateway reporting")
            print(
                f"{count} agents started and reporting in {time.monotonic() - started:.1f} s; "
                f"RSS {sum(_rss_kb(a.proc.pid) for a in agents if a.proc) / 1024:.0f} MiB in all"
            )
            raw = bundle(payload(None, None).replace("100", "200"), 1, keys, groups=["all"])
            pushed = time.monotonic()
            await publish(broker.port, group_topic("all"), raw)
            done: dict[str, float] = {}
            while len(done) < count:
                for gw, doc in reports.latest.items():
                    if gw not in done and doc["running_version"] == 1:
                        done[gw] = time.monotonic() - pushed
                await asyncio.sleep(0.02)
            times = sorted(done.values())
            print(
                f"one group push to {count} gateways: first applied after {times[0]:.2f} s, median "
                f"{statistics.median(times):.2f} s, all {times[-1]:.2f} s"
            )
        finally:
            for agent in agents:
                await agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--agents", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        folder = Path(tmp)
        (folder / "a").mkdir()
        (folder / "b").mkdir()
        (folder / "c").mkdir()
        verify_cost(folder / "a")
        asyncio.run(one_gateway(folder / "b", args.rounds))
        if args.agents:
            asyncio.run(many_gateways(folder / "c", args.agents))


if __name__ == "__main__":
    main()
