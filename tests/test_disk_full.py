"""A full state disk, as an SD card on a pole fills up: the agent never stops, and counts all it sheds.

The state folder is a small tmpfs, filled to the last byte by a file. The agent runs as
a real process against a real Modbus sensor; the receiver is down, then comes back
while the disk is still full (acknowledgements cannot be written), then space is freed.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.agentproc import AgentProcess
from tests.helpers import api_status, free_port, site_toml, wait_status, wait_until

TMPFS_BYTES = 8 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 8 MiB: a disk that really fills up (needs root to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root): {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Write a file until the disk refuses another byte."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    f.write(chunk[:size])
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    return filler


def _polls(status: dict[str, Any]) -> int:
    return sum(d["polls_ok"] for d in status["devices"])


def _dropped(status: dict[str, Any]) -> int:
    return sum(n for reasons in status["store"]["dropped"].values() for n in reasons.values())


async def test_full_disk_never_stops_the_agent_and_every_reading_is_delivered_or_counted(
    tmp_path: Path, small_disk: Path
) -> None:
    web = free_port()
    ingest = IngestServer(port=free_port())
    async with WaterLevelSimulator(unit_ids=[1, 2, 3]) as sensor:
        config = tmp_path / "site.toml"
        config.write_text(
            site_toml(
                state_dir=small_disk / "state",
                modbus_port=sensor.port,
                ingest_url=ingest.url,
                poll_interval_s=0.005,
                commit_interval_ms=50,
                unit_ids=(1, 2, 3),
                web_port=web,
            ).replace("commit_max_readings = 1000", "commit_max_readings = 1000\nmax_pending_readings = 1000")
        )
        agent = AgentProcess(config)
        await agent.start(notify_dir=tmp_path)
        await agent.wait_ready()
        await wait_status(web, lambda s: s["store"]["last_seq"] >= 300, "a backlog while the link is down")

        # The disk fills up with the link down: commits fail, readings wait in memory,
        # and past max_pending_readings the oldest are shed and counted.
        filler = _fill(small_disk)
        full = await wait_status(web, lambda s: s["store"]["last_error"] is not None, "the store to notice")
        assert "disk full" in full["store"]["last_error"]
        shedding = await wait_status(web, lambda s: _dropped(s) > 500, "readings shed and counted")
        committed_while_full = shedding["store"]["last_seq"]

        # The link comes back while the disk is still full: everything committed is
        # delivered, though no acknowledgement can be written.
        await ingest.start()
        try:
            await wait_until(lambda: len(ingest.records) >= committed_while_full, 30, "the committed backlog upstream")
            still_full = await api_status(web)
            assert still_full["store"]["last_error"] is not None, "the disk is still full"
            assert agent.proc is not None and agent.proc.returncode is None, "the agent is still running"
            assert _polls(still_full) > _polls(shedding), "polling never stopped"

            # Space comes back: pending readings are committed and sent, acks written.
            filler.unlink()
            await wait_status(web, lambda s: s["store"]["last_error"] is None, "the store to write again")
            polls_back = _polls(await api_status(web))
            await wait_status(web, lambda s: _polls(s) > polls_back + 100, "polling after the disk freed up")
            sensor.silent = True
            while True:  # until what the store holds is what the receiver has
                status = await api_status(web)
                last = status["store"]["last_seq"]
                await wait_until(lambda last=last: ingest.seqs()[-1:] == [last], 30, "the backlog to drain")
                settled = await api_status(web)
                if settled["store"]["last_seq"] == last and settled["store"]["pending_commit"] == 0:
                    break
            code, err = await agent.terminate()
            assert code == 0, err
        finally:
            await ingest.stop()
            if agent.proc is not None and agent.proc.returncode is None:
                await agent.kill()  # a failed assertion must not leave the agent behind
            await agent.close()

    produced = settled["store"]["produced_total"]
    dropped = _dropped(settled)
    delivered = len(ingest.records)
    assert dropped > 0 and delivered > 0
    assert delivered + dropped == produced, (delivered, dropped, produced, settled["store"]["dropped"])
    assert settled["store"]["dropped"]["telemetry"].get("store_unavailable", 0) == dropped
    assert "Traceback" not in err
