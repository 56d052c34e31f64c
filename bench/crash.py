"""SIGKILL the agent at random moments, many times, then count readings lost and duplicated.

Each cycle starts ``edgeagent run`` against a simulated sensor (every answer a distinct
value) and a local ingest endpoint, kills it with SIGKILL after a random 0.3-1.6 s
(during start-up, polling, committing or syncing), and reads the store file. At the end a
clean run drains the backlog. Lost: a committed sequence number the receiver never got.
Duplicated: one sensor answer stored under two sequence numbers. Target 0 and 0.
Run: python bench/crash.py [--cycles N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.agentproc import AgentProcess, read_store, store_last_seq
from tests.helpers import site_toml, wait_until

from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the simulator's own traces
    rng = random.Random(args.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgeagent-crash-") as tmp:
        folder = Path(tmp)
        db = folder / "state" / "buffer.sqlite"
        async with WaterLevelSimulator(unit_ids=[1]) as sensor, IngestServer() as ingest:
            sensor.counter_mode = True
            config = folder / "site.toml"
            config.write_text(
                site_toml(
                    state_dir=folder / "state",
                    modbus_port=sensor.port,
                    ingest_url=ingest.url,
                    poll_interval_s=0.01,
                    commit_interval_ms=50,
                    batch_max_readings=25,
                )
            )
            committed: dict[int, tuple[int, str, str, float | None]] = {}
            renumbered = 0
            for cycle in range(args.cycles):
                agent = AgentProcess(config)
                await agent.start()
                await asyncio.sleep(rng.uniform(0.3, 1.6))
                await agent.kill()
                for seq, row in read_store(db).items():
                    if committed.setdefault(seq, row) != row:
                        renumbered += 1
                if (cycle + 1) % 20 == 0:
                    print(f"  {cycle + 1} kills, {store_last_seq(db)} committed so far", flush=True)
            sensor.silent = True
            final_last = store_last_seq(db)
            agent = AgentProcess(config)
            await agent.start(notify_dir=folder)
            await agent.wait_ready()
            await wait_until(lambda: len(ingest.records) >= final_last, 300, "the backlog to drain")
            await agent.terminate()
            received = set(ingest.seqs())
            lost = sorted(set(range(1, final_last + 1)) - received)
            values = [rec["v"] for rec in ingest.device_records()]
            duplicated = len(values) - len(set(values)) + renumbered
    print(f"SIGKILL cycles: {args.cycles} in {time.monotonic() - started:.0f} s")
    print(f"readings committed: {final_last}, delivered: {len(received)}")
    print(f"duplicate records the receiver dropped (resent batches): {ingest.stats.duplicates}")
    print(f"readings lost: {len(lost)}")
    print(f"readings duplicated (one answer under two numbers): {duplicated}")


if __name__ == "__main__":
    asyncio.run(main())
