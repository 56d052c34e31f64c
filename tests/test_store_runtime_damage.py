"""The buffer's file goes bad under a running agent (an SD card failing): handled like damage at start."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

import edgeagent.store
from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.helpers import wait_until
from tests.test_pipeline import running_agent

PAGE = 4096


def _wreck_pages_under(db: Path) -> None:
    """Fold the WAL into the file (as a checkpoint would), then overwrite every page but the first."""
    conn = sqlite3.connect(db, timeout=5)
    try:
        deadline = time.monotonic() + 5
        while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] != 0:  # busy: a reader is in
            assert time.monotonic() < deadline, "could not checkpoint"
        pages = db.stat().st_size // PAGE
        with db.open("r+b") as f:
            f.seek(PAGE)
            f.write(os.urandom(PAGE * (pages - 1)))
            f.flush()
            os.fsync(f.fileno())
    finally:
        conn.close()


async def test_a_file_corrupted_while_running_is_replaced_and_nothing_pending_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ingest: IngestServer
) -> None:
    monkeypatch.setattr(edgeagent.store, "PROBE_EVERY_S", 0.2)
    async with (
        WaterLevelSimulator(unit_ids=[1]) as sensor,
        running_agent(
            tmp_path, modbus_port=sensor.port, ingest_url=ingest.url, poll_interval_s=0.01, commit_interval_ms=500
        ) as agent,
    ):
        sensor.counter_mode = True
        store = agent.store
        assert store is not None
        old_id = store.buffer_id
        await wait_until(lambda: len(ingest.device_records()) >= 100, 15, "readings upstream")
        pending = [r.value for r in store._pending]
        served_at = len(sensor.served)
        _wreck_pages_under(tmp_path / "state" / "buffer.sqlite")

        await wait_until(lambda: store.buffer_id != old_id, 15, "the damaged file to be replaced")
        await wait_until(
            lambda: any(r["n"] == "gw-test/gateway/store_corrupt" for r in ingest.records.values()),
            15,
            "the alarm upstream",
        )
        new_id = store.buffer_id
        await wait_until(
            lambda: len([k for k in ingest.records if k[1] == new_id]) >= 100, 15, "new readings in the fresh store"
        )
        alarms = [a for a in agent.live.alarms.as_list() if a["kind"] == "store_corrupt"]
        sensor.silent = True
        await store.flush()
        await wait_until(lambda: ingest.seqs(buffer_id=new_id)[-1:] == [store.last_seq], 15, "the fresh store sent")
        served_after = {mm for _, mm in sensor.served[served_at:]}

    assert len(alarms) == 1 and "went bad while running" in str(alarms[0]["message"])
    received = {rec["v"] for rec in ingest.device_records()}
    assert set(pending) <= received, "readings pending at that moment were committed to the fresh store"
    assert served_after <= received, "polling never stopped, and every later reading arrived"
    new_seqs = ingest.seqs(buffer_id=new_id)
    assert new_seqs == list(range(new_seqs[0], new_seqs[-1] + 1))
    assert new_seqs[0] > max(ingest.seqs(buffer_id=old_id)), "numbering went on above every number given"
    aside = [p for p in (tmp_path / "state").glob("buffer.sqlite.corrupt-*") if not p.name.endswith(".salvaged")]
    assert aside, "the bad file is kept for a post-mortem"
