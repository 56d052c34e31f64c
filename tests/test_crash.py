"""SIGKILL at random moments during ingest and sync: nothing committed is lost or renumbered."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.agentproc import AgentProcess, read_store, store_last_seq
from tests.helpers import site_toml, wait_until

CYCLES = int(os.environ.get("EDGEAGENT_CRASH_CYCLES", "20"))


async def test_sigkill_loop_loses_and_duplicates_nothing(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    rng = random.Random(20261121)
    state = tmp_path / "state"
    db = state / "buffer.sqlite"
    config = tmp_path / "site.toml"
    config.write_text(
        site_toml(
            state_dir=state,
            modbus_port=sensor.port,
            ingest_url=ingest.url,
            poll_interval_s=0.01,
            commit_interval_ms=50,
            batch_max_readings=25,
        )
    )
    sensor.counter_mode = True  # each answer is a distinct value
    committed: dict[int, tuple[int, str, str, float | None]] = {}
    last_seqs = []
    for _ in range(CYCLES):
        agent = AgentProcess(config)
        await agent.start()
        # Kill at a random moment: sometimes during start-up, mostly while polling and syncing.
        await asyncio.sleep(rng.uniform(0.3, 1.6))
        await agent.kill()
        rows = read_store(db)
        for seq, row in rows.items():
            assert committed.setdefault(seq, row) == row, f"seq {seq} changed across a crash"
        if db.exists():
            last_seqs.append(store_last_seq(db))
    assert last_seqs == sorted(last_seqs), "the sequence counter never goes back"
    assert ingest.stats.readings_received > 0, "some data went upstream between kills"

    # A last, clean run with the sensor silent (no new readings) drains the backlog.
    sensor.silent = True
    final_last = store_last_seq(db)
    agent = AgentProcess(config)
    await agent.start(notify_dir=tmp_path)
    await agent.wait_ready()
    await wait_until(lambda: len(ingest.records) >= final_last, 60, "the backlog to drain")
    code, stderr = await agent.terminate()
    assert code == 0, stderr
    assert store_last_seq(db) == final_last

    seqs = ingest.seqs()
    assert seqs == list(range(1, final_last + 1)), "every committed reading arrived, exactly once"
    for seq, (ts_ms, name, unit, value) in committed.items():
        (rec,) = [r for (_, _, s), r in ingest.records.items() if s == seq]
        assert (rec["n"], rec["u"], rec.get("v", rec.get("vs"))) == (f"gw-test/{name}", unit, value)
        assert abs(rec["t"] * 1000 - ts_ms) < 1.5
    # No reading was stored twice under two numbers: every served value appears at most once.
    values = [rec["v"] for rec in ingest.device_records()]
    assert len(values) == len(set(values))
    assert set(values) <= {mm for _, mm in sensor.served}
    print(
        f"{CYCLES} SIGKILL cycles: {final_last} readings committed, {len(seqs)} delivered, "
        f"{ingest.stats.duplicates} duplicate records dropped by the receiver"
    )
