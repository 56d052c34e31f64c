"""Store-and-forward end to end: hostile receivers, a link that comes back, a corrupt store, two destinations."""

from __future__ import annotations

import time
from pathlib import Path

from edgeagent.sim.ingest import Fault, IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.helpers import wait_until
from tests.test_pipeline import running_agent


async def test_500_429_hang_and_reset_in_turn_lose_and_duplicate_nothing(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    for _ in range(3):
        ingest.faults.extend(
            [
                Fault("status", status=500),
                Fault("status", status=429, retry_after="1"),
                Fault("hang"),
                Fault("reset"),
            ]
        )
    async with running_agent(
        tmp_path,
        modbus_port=sensor.port,
        ingest_url=ingest.url,
        poll_interval_s=0.02,
        batch_max_readings=10,
        uplink_timeout_s=0.5,
    ) as agent:
        uplink = agent.live.uplinks["platform"]

        def refused() -> str | None:
            # Every one of these faults is transient: a refusal would park the batch for rejected_retry_s.
            return (
                f"a transient fault was taken for a refusal: {uplink.last_result}"
                if "refused" in uplink.last_result
                else None
            )

        await wait_until(lambda: not ingest.faults, 60, "every fault to be served", fail_if=refused)
        target = agent.store.last_seq
        await wait_until(lambda: len(ingest.records) >= target, 30, "everything to arrive", fail_if=refused)
    seqs = ingest.seqs()
    assert seqs == list(range(1, len(seqs) + 1)), "nothing lost"
    assert len(ingest.records) == len(seqs), "nothing duplicated after dedupe"
    # Each 429 said "Retry-After: 1": the request after it came at least a second later.
    gaps = ingest.gaps_after_status(429)
    assert len(gaps) == 3 and min(gaps) >= 0.95, gaps


async def test_sending_resumes_when_the_link_returns_not_on_a_timer(
    tmp_path: Path, sensor: WaterLevelSimulator
) -> None:
    ingest = IngestServer()
    await ingest.start()
    await ingest.stop()  # refused from now on
    # A long backoff cap: if sending waited for its timer, it would take up to a minute.
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url, retry_max_ms=60_000) as agent:
        uplink = agent.live.uplinks["platform"]
        await wait_until(lambda: uplink.failures >= 4, 30, "several refused attempts")
        await ingest.start()
        back = time.monotonic()
        await wait_until(lambda: ingest.stats.batches_accepted >= 1, 10, "the first batch after the link returned")
        resumed_after = time.monotonic() - back
    await ingest.stop()
    assert resumed_after < 5, f"sending resumed {resumed_after:.1f} s after the link came back"


async def test_ack_timeout_rebuilds_the_client(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    ingest.faults.append(Fault("hang"))  # the connection opens, the request is read, no answer ever comes
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url, uplink_timeout_s=1.0) as agent:
        uplink = agent.live.uplinks["platform"]
        await wait_until(lambda: ingest.stats.batches_accepted >= 1, 10, "delivery on a rebuilt client")
        assert uplink.failures == 1
    # The hung request, then the same batch again on a new client, once the answer timeout (1 s) had passed.
    (hung_at, hung), (retried_at, accepted) = ingest.request_log[:2]
    assert (hung, accepted) == (0, 200)
    assert retried_at - hung_at >= 0.9, "the answer was waited for the whole timeout"
    assert ingest.seqs()[0] == 1


async def test_corrupt_store_is_moved_aside_and_an_alarm_goes_upstream_first(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "buffer.sqlite").write_bytes(b"SQLite format 3\x00" + b"\x5a" * 8192)
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url) as agent:
        await wait_until(lambda: len(ingest.records) >= 5, 10, "data upstream")
        assert agent.live.alarms and agent.live.alarms[0]["kind"] == "store_corrupt"
    first = min(ingest.records.values(), key=lambda rec: rec["seq"])
    assert first["n"] == "gw-test/gateway/store_corrupt"
    assert first["vs"] == "active"
    assert first["reason"].startswith("corrupt: the buffer failed its integrity check")
    aside = [p for p in state.glob("buffer.sqlite.corrupt-*") if not p.name.endswith(".salvaged")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"SQLite format 3\x00\x5a")


async def test_two_destinations_with_different_filters(tmp_path: Path) -> None:
    from edgeagent.sim.water_level import RainEvent

    async with (
        WaterLevelSimulator(unit_ids=[1, 2], rain=RainEvent(period_s=10, seed=3)) as sim,
        IngestServer() as drainage,
        IngestServer() as everything,
    ):
        extra = f"""
device_tags = ["drainage"]

[[uplinks]]
name = "platform-all"
kind = "http"
url = "{everything.url}"
retry_min_ms = 50
retry_max_ms = 200
"""
        async with running_agent(
            tmp_path,
            modbus_port=sim.port,
            ingest_url=drainage.url,
            unit_ids=(1, 2),
            extra=extra,
            device_tags={1: ["drainage"], 2: ["traffic"]},
        ) as agent:
            await wait_until(lambda: len(everything.records) >= 40, 15, "readings to the platform")
            sim.silent = True  # no new readings from here on: both destinations can finish
            await wait_until(lambda: len(everything.records) >= agent.store.last_seq, 15, "the platform to catch up")
            stored = {r.seq: r.device for r in await agent.store.all_readings()}
            await wait_until(
                lambda: len(drainage.records) >= sum(1 for d in stored.values() if d == "wl-01"),
                15,
                "the drainage department to catch up",
            )
        all_seqs = everything.seqs()
        assert all_seqs == list(range(1, len(all_seqs) + 1))
        devices = {seq: rec["n"].split("/")[1] for (_, _, seq), rec in everything.records.items()}
        assert set(devices.values()) == {"wl-01", "wl-02", "gateway"}
        assert drainage.seqs() == [s for s in all_seqs if devices[s] == "wl-01"], "exactly its share"
