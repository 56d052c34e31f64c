"""A gateway upgraded in place: a backlog in the previous format (a row per reading) goes upstream whole.

tests/vectors/buffer_v2.sqlite was written by the store of the previous format through
its own API (tests/vectors/make_buffer_v2.py). What it still had to send is read here
from its rows with plain SQL and the old format's rules; then the store of this version
opens a copy (converting the rows to blocks), and a real sync worker drains it through a
real HTTP uplink to a receiver that keeps each (gateway, buffer id, seq) once.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from edgeagent.config import HttpUplinkConfig
from edgeagent.live import UplinkLive
from edgeagent.model import Priority, Reading
from edgeagent.sim.ingest import IngestServer
from edgeagent.store import Store
from edgeagent.sync.worker import SyncWorker
from edgeagent.uplinks.http import HttpUplink
from tests.helpers import wait_until

VECTOR = Path(__file__).parent / "vectors" / "buffer_v2.sqlite"
GATEWAY = "gw-upgraded"
OLD_TABLES = {
    Priority.ALARM: "readings_alarm",
    Priority.EVENT: "readings_event",
    Priority.TELEMETRY: "readings_telemetry",
}
QUALITY = {1: "missing", 2: "uncertain", 3: "invalid"}


def _expected(path: Path) -> tuple[str, int, dict[str, dict[str, int]], list[dict[str, Any]]]:
    """(buffer id, last seq, drop counters, the records still unsent, in sending order) of
    a previous-format file, read with SQL and the previous format's rules."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        buffer_id = conn.execute("SELECT value FROM info WHERE key = 'buffer_id'").fetchone()[0]
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        dropped: dict[str, dict[str, int]] = {}
        for key, n in meta.items():
            if key.startswith("dropped:"):
                _, cls, reason = key.split(":")
                dropped.setdefault(cls, {})[reason] = n
        series = {sid: (d, p, u) for sid, d, p, u in conn.execute("SELECT id, device, point, unit FROM series")}
        boots = conn.execute("SELECT first_seq, boot FROM boots ORDER BY first_seq").fetchall()
        cursors = {Priority(p): s for d, p, s in conn.execute("SELECT destination, priority, seq FROM cursors")}
        last = meta["last_seq"]
        out = []
        for prio, table in OLD_TABLES.items():  # alarms first, then events, then telemetry
            rows = conn.execute(
                f"SELECT seq, ts_ms, series, value, flags FROM {table} WHERE seq > ? ORDER BY seq", (cursors[prio],)
            )
            for seq, ts_ms, sid, value, flags in rows:
                last = max(last, seq)
                device, point, unit = series[sid]
                rec: dict[str, Any] = {"seq": seq, "n": f"{GATEWAY}/{device}/{point}", "u": unit, "bid": buffer_id}
                if flags & 32:  # a text, with its reason after a newline
                    text, _, reason = str(value).partition("\n")
                    rec["vs"] = text
                    if reason:
                        rec["reason"] = reason
                elif value is not None:
                    decimals = (flags >> 2) & 7
                    rec["v"] = value / 10**decimals if decimals else float(value)
                if flags & 3:
                    rec["q"] = QUALITY[flags & 3]
                if flags & 64:  # seconds since a boot that is not this one
                    boot = [b for first, b in boots if first <= seq][-1]
                    rec.update(tq="boot", boot=boot, up=ts_ms / 1000, t=None)
                else:
                    rec["t"] = ts_ms / 1000
                out.append(rec)
        return buffer_id, last, dropped, out
    finally:
        conn.close()


async def test_a_backlog_in_the_previous_format_is_delivered_whole_in_order_once_under_its_buffer_id(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "buffer.sqlite"
    path.parent.mkdir(mode=0o700)
    shutil.copyfile(VECTOR, path)
    path.chmod(0o600)
    buffer_id, last_seq, dropped, expected = _expected(path)
    kinds = {
        (r.get("q"), "vs" in r, "tq" in r, isinstance(r.get("v"), float) and r["v"] != round(r["v"], 1))
        for r in expected
    }
    assert len(kinds) >= 5 and len(expected) > 1500, "the vector holds every kind of reading, and a backlog"

    async with IngestServer() as ingest, Store(path, destinations=["platform"]) as store:
        assert (store.buffer_id, store.last_seq) == (buffer_id, last_seq), "the same buffer, numbering where it was"
        stats = await store.stats()
        assert stats.dropped == dropped and stats.unsent == {"platform": len(expected)}
        cfg = HttpUplinkConfig.model_validate({"kind": "http", "name": "platform", "url": ingest.url})
        uplink = HttpUplink(cfg, GATEWAY)
        await uplink.start()
        live = UplinkLive(name="platform", kind="http", target=uplink.target)
        worker = SyncWorker(
            store,
            uplink,
            live,
            gateway_id=GATEWAY,
            batch_max_readings=200,
            retry_min_s=0.05,
            retry_max_s=0.5,
            rejected_retry_s=1.0,
        )
        task = asyncio.create_task(worker.run())
        try:
            await wait_until(lambda: len(ingest.records) >= len(expected), 30, "the old backlog upstream")
            # The upgraded buffer goes on numbering where the old one stopped, under its identity.
            store.append(Reading("wl-01", "water_level", 1_800_000_000.0, 42.0, "mm"))
            await wait_until(lambda: len(ingest.records) > len(expected), 10, "a new reading upstream")
        finally:
            worker.stop()
            await task
            await uplink.close()
        assert (await store.stats()).unsent == {"platform": 0}

    assert ingest.stats.duplicates == 0
    received = {seq: rec for (_, _, seq), rec in ingest.records.items()}
    assert {bid for (_, bid, _) in ingest.records} == {buffer_id}
    assert ingest.arrival_order == [r["seq"] for r in expected] + [last_seq + 1], "alarms, events, telemetry, in order"
    for want in expected:
        got = dict(received[want["seq"]])
        if want["t"] is not None:
            assert abs(got.pop("t") - want["t"]) < 0.0005, (got, want)
            want = {k: v for k, v in want.items() if k != "t"}
        assert got == want, (got, want)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not tables & set(OLD_TABLES.values()), "the rows were converted, not kept beside the blocks"
    finally:
        conn.close()
