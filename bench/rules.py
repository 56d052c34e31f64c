"""Rules: evaluations per second, the added cost per reading, memory per rule, and write latency.

Four figures (targets from the issue; they are not assertions):
1. 200 rules over 1,000 points (100 devices x 10 points; each rule reads 5 of them, a
   quarter with 60 s windows): readings and rule evaluations per second on one core
   (eKuiper publishes 150k/s for 300 simple rules on 2 cores).
2. The added cost per reading in the pipeline: the agent's CPU time per reading stored
   (polls over a real pymodbus client, decoding, health, hub, store and its commits),
   polling 100 devices x 10 points once a second, with and without the 200 rules
   (target under 10%).
3. Memory per rule, windows full, in a fresh process (eKuiper: 400-500 KB; target under 10 KB).
4. From the reading that makes a rule fire to the sign controller's value confirmed by
   reading it back, with the real agent against a simulated RS-485 line: p50 and p99,
   and beyond the bus's own transaction time (target p99 under 50 ms).

Run: python bench/rules.py [--readings N] [--toggles N] [--skip-latency]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import rss_mb

PROFILE = """
manufacturer = "Bench"
model = "Ten registers"
description = "Ten holding registers, for benchmarks"
protocol = "modbus"
default_poll_interval_s = 1.0
[asset]
category = "bench"
""" + "".join(
    f'\n[[points]]\nname = "p{i}"\nfunction = "holding"\naddress = {i}\ntype = "uint16"\nunit = "mm"\n'
    for i in range(10)
)
DEVICES, POINTS = 100, 10


def _drivers() -> None:
    folder = Path(tempfile.mkdtemp(prefix="edgeagent-bench-drivers-"))
    (folder / "bench_ten_registers.toml").write_text(PROFILE)
    os.environ["EDGEAGENT_DRIVERS_PATH"] = str(folder)


def rules_toml(n: int) -> str:
    out = []
    for i in range(n):
        idx = [(i * 5 + k) % (DEVICES * POINTS) for k in range(5)]
        refs = [f"dev-{j // POINTS:03d}/p{j % POINTS}" for j in idx]
        inputs = ", ".join(f'{name} = "{ref}"' for name, ref in zip("abcde", refs, strict=True))
        if i % 4 == 3:
            when = "avg(a, 60) > 450 and max(b, 60) > 480 or c > 495"
        else:
            when = "a > 400 and b < 100 or c - d > 300 or e > 490"
        out.append(
            f'[[rules]]\nname = "r{i:04d}"\ninputs = {{ {inputs} }}\nwhen = "{when}"\nfor_s = 10\n'
            f'clear_when = "a < 300 and e < 400"\nclear_for_s = 5\nseverity = "minor"\n'
        )
    return "\n".join(out)


def site(n_rules: int, state: Path) -> Any:
    import tomllib

    from edgeagent.config import parse_config

    data = {
        "gateway": {"id": "gw-bench", "state_dir": str(state)},
        "web": {"enabled": False},
        "buses": [{"name": "bus", "kind": "modbus_tcp", "host": "127.0.0.1", "port": 1502}],
        "devices": [
            {
                "id": f"dev-{d:03d}",
                "profile": "bench_ten_registers",
                "bus": "bus",
                "unit_id": d + 1,
                "asset": {"location": "bench", "owner": "bench"},
            }
            for d in range(DEVICES)
        ],
        "rules": tomllib.loads(rules_toml(n_rules))["rules"] if n_rules else [],
    }
    return parse_config(data)


# 1. -----------------------------------------------------------------------------------------


def throughput(readings: int) -> None:
    from edgeagent.config import profiles_for
    from edgeagent.rules.bind import bind_rules
    from edgeagent.rules.engine import Engine

    s = site(200, Path(tempfile.mkdtemp()))
    rules, _ = bind_rules(s, profiles_for(s))
    transitions = []
    engine = Engine(rules, now=1_800_000_000.0, on_transition=transitions.append)
    rng = random.Random(1)
    refs = [(f"dev-{j // POINTS:03d}", f"p{j % POINTS}") for j in range(DEVICES * POINTS)]
    values = [rng.uniform(0, 500) for _ in range(4096)]
    feed = engine.on_reading
    t = 1_800_000_000.0
    started = time.perf_counter()
    for i in range(readings):
        device, point = refs[i % 1000]
        t += 0.001  # every point once a second
        feed(device, point, values[i & 4095], True, t)
    elapsed = time.perf_counter() - started
    evaluations = sum(rt.evaluations for rt in engine.runtimes.values())
    print("1. 200 rules over 1,000 points, one core")
    print(f"   {readings / elapsed:>12,.0f} readings/s   {evaluations / elapsed:>12,.0f} rule evaluations/s")
    print(f"   {evaluations:,} evaluations, {len(transitions):,} alarm transitions, {elapsed:.2f} s")


# 2. -----------------------------------------------------------------------------------------


def sim_child() -> None:
    """In a child process: 100 units of ten holding registers on a pty, values changing at every read."""
    from edgeagent.sim.modbus_rtu import RtuBusSimulator
    from edgeagent.sim.modbus_units import SimUnit

    class Noisy(SimUnit):
        def __init__(self, seed: int) -> None:
            super().__init__(holding=10)
            self.rng = random.Random(seed)

        def refresh(self, now: float) -> None:
            self.tables["holding"][:] = [self.rng.randrange(500) for _ in range(10)]

    async def serve() -> None:
        async with RtuBusSimulator({u: Noisy(u) for u in range(1, DEVICES + 1)}, line_timing=False) as sim:
            print(sim.port, flush=True)
            await asyncio.Event().wait()

    asyncio.run(serve())


async def pipeline(seconds: float, runs: int = 3) -> None:
    """The agent's CPU per reading without rules, and what the rules' hub listener adds to it.

    The agent runs for real (a pymodbus client on a pty, the store and its commits, this
    process's CPU time); its published readings are kept, then fed through the rules unit's
    listener (200 rules) in a tight loop, which times the rules' share on its own: on a
    shared 2-core machine two whole-agent runs differ by more than that share.
    """
    from edgeagent.agent import Agent
    from edgeagent.hub import Hub, ReadingsBatch, Topic
    from edgeagent.rules.unit import RulesUnit

    async def noop_write(device: str, point: str, value: float | str) -> str:
        return str(value)

    child = await asyncio.create_subprocess_exec(sys.executable, __file__, "--sim-child", stdout=subprocess.PIPE)
    assert child.stdout is not None
    port = (await child.stdout.readline()).decode().strip()
    per_reading: list[float] = []
    batches: list[ReadingsBatch] = []
    try:
        for _ in range(runs):
            s = site(0, Path(tempfile.mkdtemp()))
            bus = {"name": "bus", "kind": "modbus_rtu", "port": port, "baudrate": 115200, "timeout_ms": 300}
            devices = [d.model_copy(update={"poll_interval_s": 1.0}) for d in s.devices]
            s = s.model_copy(update={"buses": [_rtu(bus)], "devices": devices})
            agent = Agent(s)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            await agent.ready.wait()
            await asyncio.sleep(3)  # every device polled once
            assert agent.store is not None
            batches.clear()
            agent.hub.listen(Topic.READINGS, batches.extend)
            produced0, cpu0 = (await agent.store.stats()).produced_total, time.process_time()
            await asyncio.sleep(seconds)
            produced1, cpu1 = (await agent.store.stats()).produced_total, time.process_time()
            stop.set()
            await task
            per_reading.append((cpu1 - cpu0) / (produced1 - produced0))
    finally:
        child.terminate()
        await child.wait()
    readings = sum(len(b.readings) for b in batches)
    state = Path(tempfile.mkdtemp())
    rules_site = site(200, state)
    added: list[float] = []
    for _ in range(runs):
        hub = Hub()
        unit = RulesUnit(rules_site, hub, noop_write, state_dir=state)
        await unit.start()
        started = time.process_time()
        for batch in batches:
            hub.publish(Topic.READINGS, [batch])
        added.append((time.process_time() - started) / readings)
        await unit.stop()
    base, rules = min(per_reading), statistics.median(added)
    print("2. the agent's CPU per reading, 100 devices x 10 points polled once a second (RS-485 on a pty)")
    print(f"   without rules {base * 1e6:6.1f} us (least of {runs} runs of {seconds:g} s; all: "
          f"{' '.join(f'{x * 1e6:.1f}' for x in per_reading)})")  # fmt: skip
    print(f"   the 200 rules' listener on those {readings:,} readings: {rules * 1e6:5.2f} us each, "
          f"added {100 * rules / base:4.1f} %")  # fmt: skip


def _rtu(bus: dict[str, Any]) -> Any:
    from edgeagent.config import ModbusRtuBus

    return ModbusRtuBus.model_validate(bus)


# 3. -----------------------------------------------------------------------------------------


def rss_child(n_rules: int) -> None:
    """In a fresh process: memory of an engine with ``n_rules`` rules, windows full (1 reading/s, 2 min)."""
    from edgeagent.config import profiles_for
    from edgeagent.rules.bind import bind_rules
    from edgeagent.rules.engine import Engine

    s = site(n_rules, Path(tempfile.mkdtemp()))
    profiles_for(s)
    gc.collect()
    before = rss_mb()
    rules, _ = bind_rules(s, profiles_for(s))
    engine = Engine(rules, now=1_800_000_000.0)
    rng = random.Random(3)
    t = 1_800_000_000.0
    for second in range(120):
        for j in range(DEVICES * POINTS):
            engine.on_reading(f"dev-{j // POINTS:03d}", f"p{j % POINTS}", rng.uniform(0, 500), True, t + second)
    gc.collect()
    print(json.dumps({"rules": n_rules, "mb": rss_mb() - before, "engine": id(engine) > 0}))


def rss() -> None:
    per = {}
    for n in (200, 2000):
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(n)], capture_output=True, text=True, check=True
        ).stdout
        per[n] = json.loads(out.splitlines()[-1])["mb"]
    print("3. memory per rule (5 inputs, a quarter with 60 s windows kept full), fresh processes")
    for n, mb in per.items():
        print(f"   {n:>5} rules: {mb * 1024:8.0f} KB   {mb * 1024 * 1024 / n / 1024:6.2f} KB per rule")
    slope = (per[2000] - per[200]) * 1024 / 1800
    print(f"   per added rule (2,000 vs 200): {slope:.2f} KB")


# 4. -----------------------------------------------------------------------------------------

LATENCY_RULE = """
[[rules]]
name = "close"
inputs = { depth = "wl-01/water_level" }
when = "depth > 150"
actions = [ { on = "raise", write = "sign-01/closure", value = 1 },
            { on = "clear", write = "sign-01/closure", value = 0 } ]
"""


async def latency(toggles: int, line_timing: bool) -> None:
    """Each level change makes the rule write the sign's coil; the writer times every confirmed write.

    ``Writer.latencies`` splits each one: the whole (from the reading that made the rule fire
    to the read-back that confirmed the value), the write call (the bus's queue and the
    write transaction) and the read-back (the scheduler's poll of the sign right after).
    What is beyond the bus's own time is the rest: the rule's evaluation, the writer waking
    up, the confirmation.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.helpers import wait_until
    from tests.rulesite import rules_of, running_agent, simulators, site_data

    async with simulators() as sims:
        sims.line.line_timing = line_timing
        data = site_data(sims, Path(tempfile.mkdtemp()) / "state", LATENCY_RULE)
        data["devices"] = [d for d in data["devices"] if d["id"] in ("wl-01", "sign-01")]
        data["devices"][0]["poll_interval_s"] = 0.05
        async with running_agent(data) as agent:
            writer = rules_of(agent).writer
            await wait_until(lambda: agent.live.devices["sign-01"].state.value == "online", 10, "the sign")
            for i in range(toggles):
                target = float(i % 2 == 0)
                sims.wl1.fixed_level_mm = 200.0 if target else 20.0
                await wait_until(lambda t=target: writer.confirmed.get(("sign-01", "closure")) == t, 10, "written")
                await asyncio.sleep(1.05)  # the per-device write interval
            samples = list(writer.latencies)[-toggles:]

    def pct(xs: list[float], p: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]

    total = [s.total_s * 1000 for s in samples]
    bus = [(s.write_s + s.readback_s) * 1000 for s in samples]
    beyond = [t - b for t, b in zip(total, bus, strict=True)]
    kind = "9600 baud, real line timing" if line_timing else "no line timing: a pty answers at once"
    print(f"4. reading -> confirmed write, real agent, simulated RS-485 line ({kind}), {len(samples)} writes")
    print(f"   total                                    p50 {pct(total, 50):6.1f} ms   p99 {pct(total, 99):6.1f} ms")
    print(f"   on the bus (write, then the read-back)   p50 {pct(bus, 50):6.1f} ms   p99 {pct(bus, 99):6.1f} ms")
    print(f"   beyond the bus                           p50 {pct(beyond, 50):6.1f} ms   p99 {pct(beyond, 99):6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=500_000)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each pipeline run")
    parser.add_argument("--toggles", type=int, default=60, help="writes timed per latency run")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sim-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _drivers()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    if args.sim_child:
        sim_child()
        return
    import logging

    logging.disable(logging.CRITICAL)  # the rule's alarms would be logged at every toggle
    throughput(args.readings)
    asyncio.run(pipeline(args.seconds))
    rss()
    if not args.skip_latency:
        for line_timing in (False, True):
            asyncio.run(latency(args.toggles, line_timing))


if __name__ == "__main__":
    main()
