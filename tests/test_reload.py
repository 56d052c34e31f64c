"""Live reconfiguration as an operator meets it: edit the file, `systemctl reload` (SIGHUP).

A real agent process polls real Modbus servers on two buses; a receiver deduplicates as
the docs say. The untouched device must not miss a beat, the changed config must show
on the status page and upstream, and a broken config must change nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import signal
from pathlib import Path
from typing import Any

from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.agentproc import AgentProcess
from tests.helpers import api_status, api_token_line, free_port, wait_status, wait_until

INTERVAL_S = 0.2


def _device(
    dev_id: str, bus: str, unit: int, interval_s: float = INTERVAL_S, profile: str = "generic_water_level"
) -> str:
    return f"""
[[devices]]
id = "{dev_id}"
profile = "{profile}"
bus = "{bus}"
unit_id = {unit}
poll_interval_s = {interval_s}
backoff_max_s = 1.0
[devices.asset]
location = "test bench"
owner = "tests"
"""


def _site(state: Path, web: int, ingest_url: str, ports: tuple[int, int], devices: str) -> str:
    buses = "".join(
        f"""
[[buses]]
name = "{name}"
kind = "modbus_tcp"
host = "127.0.0.1"
port = {port}
timeout_ms = 300
reconnect_min_ms = 50
reconnect_max_ms = 200
"""
        for name, port in zip(("east", "west"), ports, strict=True)
    )
    return f"""
[gateway]
id = "gw-test"
state_dir = "{state}"

[store]
commit_interval_ms = 100

[web]
port = {web}
{api_token_line(state)}
{buses}
{devices}
[[uplinks]]
name = "platform"
kind = "http"
url = "{ingest_url}"
batch_max_readings = 50
timeout_s = 2.0
retry_min_ms = 50
retry_max_ms = 500
"""


def _write(path: Path, text: str) -> str:
    """Replace the file as an editor or a config tool would, and return its hash as the agent shows it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _times(ingest: IngestServer, name: str) -> list[float]:
    return sorted(rec["t"] for rec in ingest.records.values() if rec["n"] == f"gw-test/{name}")


def _state(status: dict[str, Any], dev_id: str) -> str | None:
    return next((d["state"] for d in status["devices"] if d["id"] == dev_id), None)


async def test_sighup_applies_a_changed_config_without_a_gap_and_refuses_a_broken_one(tmp_path: Path) -> None:
    web = free_port()
    async with (
        WaterLevelSimulator(unit_ids=[1, 2]) as east,
        WaterLevelSimulator(unit_ids=[1, 2]) as west,
        IngestServer() as ingest,
    ):
        config = tmp_path / "site.toml"
        ports = (east.port, west.port)
        base = _device("wl-01", "east", 1) + _device("wl-02", "east", 2) + _device("wl-03", "west", 1)
        first_hash = _write(config, _site(tmp_path / "state", web, ingest.url, ports, base))
        agent = AgentProcess(config)
        await agent.start(notify_dir=tmp_path)
        try:
            await agent.wait_ready()
            status = await wait_status(web, lambda s: _state(s, "wl-03") == "online", "every device online")
            assert status["gateway"]["config"]["hash"] == first_hash
            await wait_until(lambda: len(_times(ingest, "wl-01/water_level")) >= 10, 10, "wl-01 polling")

            # wl-02 polls at a new interval, wl-03 goes, wl-04 comes on the other bus; wl-01 is untouched.
            changed = (
                _device("wl-01", "east", 1) + _device("wl-02", "east", 2, interval_s=0.5) + _device("wl-04", "west", 2)
            )
            new_hash = _write(config, _site(tmp_path / "state", web, ingest.url, ports, changed))
            assert agent.proc is not None
            agent.proc.send_signal(signal.SIGHUP)
            status = await wait_status(web, lambda s: s["gateway"]["config"]["hash"] == new_hash, "the new config")
            assert status["gateway"]["config"]["outcome"] == "applied"
            assert "wl-04" in status["gateway"]["config"]["detail"]
            status = await wait_status(web, lambda s: _state(s, "wl-04") == "online", "the added device online")
            assert _state(status, "wl-03") is None, "the removed device is gone from the page"
            wl03_at_reload = len(_times(ingest, "wl-03/water_level"))
            before = len(_times(ingest, "wl-01/water_level"))
            await wait_until(lambda: len(_times(ingest, "wl-01/water_level")) >= before + 10, 10, "wl-01 polling on")

            # A broken config (an unknown profile) changes nothing; the running one stays.
            broken = changed + _device("wl-05", "west", 1, profile="no_such_profile")
            broken_hash = _write(config, _site(tmp_path / "state", web, ingest.url, ports, broken))
            agent.proc.send_signal(signal.SIGHUP)
            status = await wait_status(web, lambda s: s["gateway"]["config"]["outcome"] == "rejected", "a rejection")
            assert status["gateway"]["config"]["hash"] == new_hash, "the running config is still the last good one"
            assert status["gateway"]["config"]["attempted_hash"] == broken_hash
            assert "devices[3].profile" in status["gateway"]["config"]["detail"]
            await wait_until(
                lambda: any(r["n"] == "gw-test/gateway/config_rejected" for r in ingest.records.values()),
                10,
                "the config_rejected event upstream",
            )
            before = len(_times(ingest, "wl-01/water_level"))
            await wait_until(lambda: len(_times(ingest, "wl-01/water_level")) >= before + 10, 10, "wl-01 polling on")
            east.silent = west.silent = True  # let the receiver catch up with everything committed
            while True:
                last = (await api_status(web))["store"]["last_seq"]
                await wait_until(lambda last=last: ingest.seqs()[-1:] == [last], 15, "delivery of everything")
                settled = await api_status(web)
                if settled["store"]["last_seq"] == last and settled["store"]["pending_commit"] == 0:
                    break
            code, stderr = await agent.terminate()
        finally:
            if agent.proc is not None and agent.proc.returncode is None:
                await agent.kill()
            await agent.close()

    assert code == 0, stderr
    # The untouched device never missed a beat, across both reloads.
    times = _times(ingest, "wl-01/water_level")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= 1.5 * INTERVAL_S, f"largest gap {max(gaps):.3f} s"
    # Nothing was lost or numbered twice: one contiguous run of sequence numbers.
    seqs = ingest.seqs()
    assert seqs == list(range(1, len(seqs) + 1))
    # The removed device stopped; the changed one polls at its new pace.
    assert len(_times(ingest, "wl-03/water_level")) <= wl03_at_reload + 1
    wl02 = _times(ingest, "wl-02/water_level")
    assert wl02[-1] - wl02[-2] >= 0.4
    # Both outcomes went upstream as events, named by the config's hash.
    events = {(r["n"].rsplit("/", 1)[1], r["vs"]) for r in ingest.records.values() if "/gateway/config" in r["n"]}
    assert events == {("config_applied", new_hash), ("config_rejected", broken_hash)}
    assert "devices[3].profile" in stderr and "reload rejected" in stderr
