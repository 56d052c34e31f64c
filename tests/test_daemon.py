"""The agent as a daemon: systemd notifications, clean SIGTERM, an upload in flight at stop."""

from __future__ import annotations

import time
from pathlib import Path

from edgeagent.sim.ingest import Fault, IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.agentproc import AgentProcess
from tests.helpers import site_toml, wait_until


def _config(tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer, **kwargs: float) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        site_toml(state_dir=tmp_path / "state", modbus_port=sensor.port, ingest_url=ingest.url, **kwargs)  # type: ignore[arg-type]
    )
    return path


async def test_notify_protocol_and_clean_sigterm(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    agent = AgentProcess(_config(tmp_path, sensor, ingest), env={"WATCHDOG_USEC": "200000"})
    await agent.start(notify_dir=tmp_path)
    await agent.wait_ready()
    assert agent.notify is not None
    notify = agent.notify
    status = [m for m in notify.messages if m.startswith("STATUS=")]
    assert status and "devices online" in status[0]
    await wait_until(lambda: notify.messages.count("WATCHDOG=1") >= 3, 5, "watchdog pings")
    await wait_until(lambda: len(ingest.records) >= 3, 10, "data upstream")
    started = time.monotonic()
    code, stderr = await agent.terminate(timeout_s=5)
    assert time.monotonic() - started < 5
    assert code == 0, stderr
    assert "STOPPING=1" in notify.messages
    assert "Traceback" not in stderr


async def test_stop_with_an_upload_in_flight_exits_promptly_and_resends(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    config = _config(tmp_path, sensor, ingest, uplink_timeout_s=30.0)
    ingest.faults.append(Fault("hang"))  # the first upload never gets an answer
    agent = AgentProcess(config)
    await agent.start(notify_dir=tmp_path)
    await agent.wait_ready()
    await wait_until(lambda: ingest.stats.requests >= 1, 10, "the upload to start")
    started = time.monotonic()
    code, stderr = await agent.terminate(timeout_s=5)
    assert code == 0, stderr
    assert time.monotonic() - started < 5
    assert "abandoning 1 upload" in stderr
    assert ingest.stats.readings_received == 0

    agent = AgentProcess(config)
    await agent.start(notify_dir=tmp_path)
    await agent.wait_ready()
    await wait_until(lambda: len(ingest.records) >= 5, 10, "the abandoned batch to be sent again")
    await agent.terminate()
    seqs = ingest.seqs()
    assert seqs == list(range(1, len(seqs) + 1))
