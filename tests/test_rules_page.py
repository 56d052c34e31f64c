"""Alarms and rules as the status page and ``edgeagent alarms`` show them; acknowledging one."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgeagent.web.auth import set_password
from tests.helpers import wait_until
from tests.rulesite import alarm_records, book_states, running_agent, simulators, site_data, to_toml

pytestmark = pytest.mark.timeout(120)

RULE = """
[[rules]]
name = "close"
subjects = { devices = ["wl-01"] }
inputs = { depth = "water_level" }
when = "depth > 150"
severity = "critical"
renotify_s = 10
"""
TOKEN = "api-token-for-tests-0123456789"
PASSWORD = "correct horse battery"


async def edgeagent(*args: str, stdin: str = "") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgeagent", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_alarms_lists_the_active_alarms_and_acknowledges_one_through_the_page(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    token = tmp_path / "api.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    set_password(state / "web-users", "tech", PASSWORD, "technician")
    async with simulators() as sims:
        sims.wl1.fixed_level_mm = 200.0
        data = site_data(sims, state, RULE)
        data["web"] = {"enabled": True, "host": "127.0.0.1", "port": 0, "api_token_file": str(token)}
        config = tmp_path / "site.toml"
        config.write_text(to_toml(data, RULE))
        async with running_agent(data) as agent:
            await wait_until(lambda: book_states(agent).get("wl-01/close") == "raised", 10, "the alarm")
            url = agent.web_url
            assert url is not None
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{url}api/status", headers={"Authorization": f"Bearer {TOKEN}"}) as resp,
            ):
                status: dict[str, Any] = await resp.json()
            alarm = next(a for a in status["alarms"] if a["id"] == "wl-01/close")
            assert (alarm["state"], alarm["severity"], alarm["rule"], alarm["acked_by"]) == (
                "raised",
                "critical",
                "close",
                None,
            )
            (rule,) = status["rules"]["rules"]
            assert rule["name"] == "close" and rule["fired"] == 1
            assert rule["last_fired_ts"] <= rule["last_evaluation_ts"]
            assert rule["subjects"][0]["alarm"] == "raised"

            code, out, err = await edgeagent("alarms", "--config", str(config), "--url", url)
            assert code == 0, err
            assert out.startswith("wl-01/close  raised  critical  "), out
            assert "depth > 150 (depth 200)" in out

            code, out, err = await edgeagent(
                "alarms", "--config", str(config), "--url", url, "--ack", "wl-01/close", "--user", "tech",
                stdin=PASSWORD + "\n",
            )  # fmt: skip
            assert code == 0, (out, err)
            assert out.strip() == "wl-01/close: ok"
            await wait_until(lambda: book_states(agent).get("wl-01/close") == "acknowledged", 10, "acknowledged")
            await wait_until(lambda: len(alarm_records(sims.ingest, "wl-01/close")) == 2, 10, "upstream")
            code, out, _ = await edgeagent("alarms", "--config", str(config), "--url", url)
            assert "wl-01/close  acknowledged by tech  critical" in out
            code, out, _ = await edgeagent(
                "alarms", "--url", url, "--ack", "wl-01/nope", "--user", "tech", stdin=PASSWORD + "\n"
            )
            assert code == 1 and out.strip() == "wl-01/nope: refused: no such alarm"
            code, out, _ = await edgeagent(
                "alarms", "--url", url, "--ack", "wl-01/close", "--user", "tech", stdin=PASSWORD + "\n"
            )
            assert code == 0, "acknowledging again changes nothing (and sends nothing more upstream)"
    records = alarm_records(sims.ingest, "wl-01/close")
    assert [r["vs"] for r in records] == ["raised", "acknowledged"]
    assert records[1]["reason"] == "critical: acknowledged by tech"
    saved = (state / "rules-state.json").read_text()
    assert '"alarm":"acknowledged"' in saved and '"acked_by":"tech"' in saved, "the engine keeps it across restarts"
