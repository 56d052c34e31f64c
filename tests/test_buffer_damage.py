"""A damaged or replaced buffer, met as a gateway in the field meets it.

Each case: a real agent fills its buffer while the uplink is down, stops (SIGKILL, or
SIGTERM where the damage is to the main file), the buffer is damaged the way SD cards
and technicians damage them, and a second agent starts with the receiver reachable.
The receiver deduplicates exactly as docs/uplinks.md tells it to, on (gateway, buffer
id, seq). It must get every reading taken after the restart, the rows of the old
buffer that could still be read, and an alarm (or, for a new card, an event) naming
what happened.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.agentproc import AgentProcess, store_last_seq
from tests.helpers import api_status, free_port, site_toml, wait_status, wait_until

GATEWAY = "gw-test"


def _delete_wal(db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink()


def _garbage_wal(db: Path) -> None:
    wal = Path(f"{db}-wal")
    wal.write_bytes(os.urandom(wal.stat().st_size))


def _corrupt_page(db: Path) -> None:
    data = bytearray(db.read_bytes())
    pages = len(data) // 4096
    page = pages * 2 // 3  # among the telemetry table's leaf pages
    data[page * 4096 : (page + 1) * 4096] = b"\xa5" * 4096
    db.write_bytes(bytes(data))


def _cut_in_half(db: Path) -> None:
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2)


def _zero_length(db: Path) -> None:
    db.write_bytes(b"")


def _new_card(db: Path) -> None:
    shutil.rmtree(db.parent)


# (case, how the first agent stops, the damage, what the alarm says, readings buffered
# first, rows must be salvaged). Where part of the file stays readable the backlog is
# large enough that the readable part holds readings, not only the schema's pages (a
# block keeps these readings in two or three bytes each, so that takes many of them).
CASES: list[tuple[str, str, Callable[[Path], None], str, int, bool]] = [
    ("wal_deleted", "kill", _delete_wal, "store_corrupt:wal_missing", 1000, False),
    ("wal_garbage", "kill", _garbage_wal, "store_corrupt:wal_garbage", 1000, False),
    ("page_corrupt", "term", _corrupt_page, "store_corrupt:corrupt", 4000, True),
    ("cut_in_half", "term", _cut_in_half, "store_corrupt:corrupt", 6000, True),
    ("zero_length", "term", _zero_length, "store_corrupt:empty", 1000, False),
    ("new_sd_card", "term", _new_card, "store_created:created", 1000, False),
]


@pytest.mark.parametrize(("case", "stop", "damage", "alarm", "backlog", "salvages"), CASES, ids=[c[0] for c in CASES])
async def test_after_buffer_damage_a_deduping_receiver_gets_every_new_reading_and_the_salvage(
    tmp_path: Path,
    case: str,
    stop: str,
    damage: Callable[[Path], None],
    alarm: str,
    backlog: int,
    salvages: bool,
) -> None:
    state = tmp_path / "state"
    db = state / "buffer.sqlite"
    web_port = free_port()
    async with WaterLevelSimulator(unit_ids=[1, 2, 3]) as sensor:
        sensor.counter_mode = True  # every answer a distinct value
        ingest = IngestServer(port=free_port())
        config = tmp_path / "site.toml"
        # The receiver is not up yet: the first agent's readings all stay unsent.
        config.write_text(
            site_toml(
                state_dir=state,
                modbus_port=sensor.port,
                ingest_url=ingest.url,
                poll_interval_s=0.005,
                commit_interval_ms=50,
                unit_ids=(1, 2, 3),
                web_port=web_port,
            )
        )
        first = AgentProcess(config)
        await first.start(notify_dir=tmp_path)
        async with first.guarded():
            await first.wait_ready()
            await wait_until(
                lambda: db.exists() and store_last_seq(db) >= backlog, 90, f"a backlog of {backlog} readings"
            )
            if stop == "kill":
                await first.kill()
            else:
                code, err = await first.terminate()
                assert code == 0, err
        old_last = store_last_seq(db) if db.exists() else 0
        damage(db)

        await ingest.start()
        try:
            served_before = len(sensor.served)
            second = AgentProcess(config)
            await second.start(notify_dir=tmp_path)
            async with second.guarded():
                await second.wait_ready()
                status = await api_status(web_port)
                new_id = status["store"]["buffer_id"]
                await wait_until(lambda: len(ingest.seqs(buffer_id=new_id)) >= 200, 30, "new readings upstream")
                sensor.silent = True  # no new readings: let everything drain
                while True:  # until the last reading committed is the last one received
                    status = await api_status(web_port)
                    last = status["store"]["last_seq"]
                    await wait_until(
                        lambda last=last: ingest.seqs(buffer_id=new_id)[-1:] == [last], 30, "the new buffer to drain"
                    )
                    settled = await api_status(web_port)
                    if settled["store"]["last_seq"] == last and settled["store"]["pending_commit"] == 0:
                        break
                damage_info = status["store"]["damage"]
                await wait_status(web_port, lambda s: not s["store"]["salvage"], "the salvage to be delivered")
                code, err = await second.terminate()
                assert code == 0, err
        finally:
            await ingest.stop()

    # Every reading taken after the restart arrived: a gapless run of new numbers, above
    # every number the old buffer gave (so a receiver that ignored the buffer id would
    # not drop them either), under an identity the receiver has never seen.
    new_seqs = ingest.seqs(buffer_id=new_id)
    old_seqs = [s for (_, b, s) in ingest.records if b != new_id]
    assert new_seqs == list(range(new_seqs[0], last + 1))
    if case in ("new_sd_card", "zero_length"):
        assert new_seqs[0] == 1  # nothing is known: a new identity keeps them apart
    else:
        assert new_seqs[0] > max(old_seqs, default=0)
    served_after = {mm for _, mm in sensor.served[served_before:]}
    new_values = {rec["v"] for (_, b, _), rec in ingest.records.items() if b == new_id and "v" in rec}
    assert new_values, "field readings under the new identity"
    assert new_values <= served_after

    # The alarm (or event) names what happened, and went upstream.
    kind, _, says = alarm.partition(":")
    named = [rec for rec in ingest.records.values() if rec["n"] == f"{GATEWAY}/gateway/{kind}"]
    assert len(named) == 1, named
    text = named[0]["reason"] if kind == "store_corrupt" else named[0]["vs"]
    assert named[0]["vs"] == ("active" if kind == "store_corrupt" else "created")
    assert text.startswith(says), named[0]

    # What could still be read of the old buffer was salvaged, arrived under its old
    # identity and numbers, and the salvage buffer was removed once delivered.
    salvaged = 0 if damage_info is None else damage_info["salvaged"]
    old_ids = {b for (_, b, _) in ingest.records} - {new_id}
    if salvages:
        assert salvaged > 0 and damage_info["moved_aside"]
        assert old_ids == {damage_info["old_buffer_id"]}
        assert len(old_seqs) == salvaged
        assert len(old_seqs) > 100, "field readings, not only the gateway's own event"
        assert set(old_seqs) <= set(range(1, old_last + 1))
        assert damage_info["lost_at_most"] is not None and salvaged + damage_info["lost_at_most"] <= old_last
    else:
        assert len(old_ids) <= 1
    assert not list(state.glob("buffer.sqlite.salvage-*.sqlite")), "a delivered salvage buffer is removed"
    if case != "new_sd_card" and case != "zero_length":
        assert list(state.glob("buffer.sqlite.corrupt-*")), "the damaged file is kept for a post-mortem"
