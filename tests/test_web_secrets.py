"""No password, token, key or session id in any log line, page or API answer, or upstream.

Known secrets are set (an uplink token, the API token, a user's password, a wrong
password tried, the generated TLS key, the session id the login hands out); then every
page and API route is read and every action taken, and everything captured is searched.
"""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.helpers import TEST_API_TOKEN, free_port, wait_until
from tests.test_pipeline import running_agent
from tests.webclient import TEST_PASSWORD, logged_in, post_login

UPLINK_TOKEN = "uplink-secret-token-7f3a9c"
WRONG_PASSWORD = "wrong-password-b41d"


async def test_no_secret_in_any_log_line_page_api_answer_or_upstream_event(
    tmp_path: Path, sensor: WaterLevelSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "uplink.token"
    token_file.write_text(UPLINK_TOKEN + "\n")
    port = free_port()
    answers: list[str] = []
    async with IngestServer(token=UPLINK_TOKEN) as ingest:
        async with running_agent(
            tmp_path,
            modbus_port=sensor.port,
            ingest_url=ingest.url,
            web_port=port,
            web_extra='host = "0.0.0.0"\n',
            extra=f'token_file = "{token_file}"\n',
        ) as agent:
            base = f"https://127.0.0.1:{port}/"
            await wait_until(lambda: agent.live.uplinks["platform"].readings_sent > 0, 10, "data upstream")
            async with logged_in(base, tmp_path / "state") as page:
                session_id = page.http.cookie_jar.filter_cookies(URL(base))["edgeagent_session"].value
                async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
                    failed = await post_login(other, base, "tech", WRONG_PASSWORD)
                    answers.append(await failed.text())
                for path in ("/", "/login", "/api/status", "/api/session", "/api/devices/wl-01", "/api/audit"):
                    answers.append(str((await page.get(path))[1]))
                for level in ("DEBUG", "INFO", "WARNING"):
                    answers.append(str((await page.get(f"/api/logs?level={level}"))[1]))
                for path, body in (
                    ("/api/devices/wl-01/repoll", {}),
                    ("/api/devices/wl-01/write", {"point": "water_level", "value": 5}),
                    ("/api/alarms/ack", {"source": "gateway", "kind": "none"}),
                    ("/api/uplinks/platform/sync", {}),
                ):
                    answers.append(str((await page.post(path, body))[1]))
                async with page.http.get(f"{base}api/events", ssl=False) as resp:
                    answers.append((await resp.content.read(2000)).decode())
                async with page.http.get(
                    f"{base}metrics", headers={"Authorization": f"Bearer {TEST_API_TOKEN}"}, ssl=False
                ) as resp:
                    answers.append(await resp.text())
                await page.post("/logout")
            await wait_until(
                lambda: sum(1 for r in ingest.records.values() if str(r.get("n")).endswith("/audit")) >= 7,
                10,
                "the audit events upstream",
            )
        upstream = [str(r) for r in ingest.records.values()]
    key_pem = (tmp_path / "state" / "web-tls" / "key.pem").read_text()
    key_body = key_pem.splitlines()[1]
    logged = [f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records]
    secrets = {
        "the uplink token": UPLINK_TOKEN,
        "the API token": TEST_API_TOKEN,
        "the password": TEST_PASSWORD,
        "a wrong password": WRONG_PASSWORD,
        "the session id": session_id,
        "the TLS key": key_body,
    }
    assert len(answers) > 12 and any("wl-01" in a for a in answers)
    assert any("failed login for 'tech'" in line for line in logged), "a failure is logged, without the password"
    for what, secret in secrets.items():
        for where, texts in (("the log", logged), ("an answer", answers), ("upstream", upstream)):
            leaked = [t for t in texts if secret in t]
            assert not leaked, f"{what} appears in {where}: {leaked[0][:300]}"
