"""How the page is reached and read by machines: HTTPS off loopback with a generated certificate whose
fingerprint doctor prints, plain HTTP only when asked for by name (and warned about), /healthz, /metrics."""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeagent.config import load_config
from edgeagent.doctor import Status, check_status_page
from edgeagent.errors import ConfigError
from edgeagent.preflight import check_site
from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from edgeagent.web.auth import set_password
from tests.helpers import API_AUTH, free_port, site_toml, wait_until
from tests.test_pipeline import running_agent
from tests.webclient import TEST_PASSWORD, post_login

DOC = (Path(__file__).resolve().parents[1] / "docs" / "page.md").read_text()


async def _peer_certificate(port: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    assert der
    return der


async def test_off_loopback_the_page_is_https_with_a_generated_certificate_doctor_fingerprints(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    web = 'host = "0.0.0.0"\n'
    async with running_agent(
        tmp_path, modbus_port=sensor.port, ingest_url=ingest.url, web_port=port, web_extra=web
    ) as agent:
        assert agent.web_url == f"https://0.0.0.0:{port}/"
        der = await _peer_certificate(port)
        async with aiohttp.ClientSession() as http:
            # Plain HTTP to the TLS port gets no page.
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    await resp.read()
            async with http.get(f"https://127.0.0.1:{port}/api/status", headers=API_AUTH, ssl=False) as resp:
                status = await resp.json()
            async with http.get(f"https://127.0.0.1:{port}/login", ssl=False) as resp:
                login = await resp.text()
                hsts = resp.headers.get("Strict-Transport-Security")
        # The session cookie a login sets over HTTPS never travels over plain HTTP.
        set_password(tmp_path / "state" / "web-users", "tech", TEST_PASSWORD, "technician")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            logged = await post_login(browser, f"https://127.0.0.1:{port}/", "tech", TEST_PASSWORD)
        assert logged.status == 303
        cookie = next(h for h in logged.headers.getall("Set-Cookie") if h.startswith("edgeagent_session="))
        assert "Secure" in cookie and "HttpOnly" in cookie, cookie
    digest = hashlib.sha256(der).hexdigest().upper()
    fingerprint = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    assert status["gateway"]["tls_fingerprint"] == fingerprint
    assert fingerprint in login and hsts
    key = tmp_path / "state" / "web-tls" / "key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    checks = check_status_page(load_config(tmp_path / "site.toml"), tmp_path / "site.toml")
    assert checks[0].status is Status.OK and fingerprint in checks[0].detail
    assert not any("plain HTTP" in r.getMessage() for r in caplog.records)


async def test_plain_http_off_loopback_only_by_name_and_then_warned(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    web = 'host = "0.0.0.0"\nplain_http_off_loopback = true\n'
    async with running_agent(
        tmp_path, modbus_port=sensor.port, ingest_url=ingest.url, web_port=port, web_extra=web
    ) as agent:
        assert agent.web_url == f"http://0.0.0.0:{port}/"
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200
    assert any("serves plain HTTP on 0.0.0.0" in r.getMessage() for r in caplog.records)
    checks = check_status_page(load_config(tmp_path / "site.toml"), tmp_path / "site.toml")
    assert checks[0].status is Status.WARN and "plain HTTP off loopback" in checks[0].detail
    # Asking for plain HTTP and giving a certificate at once is refused by the check run shares.
    cert = tmp_path / "cert.pem"
    text = site_toml(
        state_dir=tmp_path / "state2",
        modbus_port=sensor.port,
        ingest_url=ingest.url,
        web_extra=(
            f'host = "0.0.0.0"\nplain_http_off_loopback = true\ntls_cert_file = "{cert}"\ntls_key_file = "{cert}"\n'
        ),
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match="plain_http_off_loopback contradicts tls_cert_file"):
        check_site(load_config(bad))


async def test_a_configured_certificate_that_does_not_load_is_refused_by_check_config(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    path = tmp_path / "site.toml"
    path.write_text(
        site_toml(
            state_dir=tmp_path / "state",
            modbus_port=sensor.port,
            ingest_url=ingest.url,
            web_extra=f'tls_cert_file = "{tmp_path / "cert.pem"}"\ntls_key_file = "{tmp_path / "key.pem"}"\n',
        )
    )
    with pytest.raises(ConfigError) as caught:
        check_site(load_config(path))
    assert [p.path for p in caught.value.problems] == ["web.tls_cert_file"]


def _documented_series() -> set[str]:
    table = DOC[DOC.index("## `/metrics`") :]
    return set(re.findall(r"^\| `(edgeagent_[a-z_]+)`", table, re.MULTILINE))


async def test_metrics_parse_and_carry_every_documented_series(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url) as agent:
        await wait_until(lambda: agent.live.uplinks["platform"].readings_sent >= 5, 10, "readings upstream")
        await wait_until(lambda: agent.live.devices["wl-01"].polls_ok >= 5, 10, "five polls")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{agent.web_url}metrics") as resp:
                assert resp.status == 401, "no token, no metrics"
            async with http.get(f"{agent.web_url}metrics", headers=API_AUTH) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await resp.text()
            async with http.get(f"{agent.web_url}healthz") as resp:
                assert resp.status == 200 and await resp.text() == "ok\n"
    families = list(text_string_to_metric_families(text))
    samples = {s.name: s for f in families for s in f.samples}
    documented = _documented_series()
    assert len(documented) >= 20
    # None dropped here, and no rules configured.
    missing = documented - set(samples) - {"edgeagent_store_dropped_readings_total", "edgeagent_rule_evaluations_total"}
    assert not missing, f"documented but not served: {missing}"
    undocumented = {n for n in samples if n not in documented and not n.endswith("_created")}
    assert not undocumented, f"served but not documented: {undocumented}"
    polls = next(s for s in families if s.name == "edgeagent_device_polls")
    ok = next(s for s in polls.samples if s.labels == {"device": "wl-01", "result": "ok"})
    assert ok.value >= 5
    assert samples["edgeagent_uplink_sent_readings_total"].value >= 5
    # No reading value is a label.
    assert all(
        set(s.labels) <= {"device", "result", "state", "bus", "class", "reason", "destination", "topic", "version"}
        for f in families
        for s in f.samples
    )


async def test_healthz_is_503_while_a_critical_part_does_not_check_in(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url) as agent:
        agent.heartbeats.register("a-task-that-hangs", allowance_s=0.0)
        await asyncio.sleep(0.01)  # past its zero allowance
        async with aiohttp.ClientSession() as http, http.get(f"{agent.web_url}healthz") as resp:
            assert resp.status == 503
            body = await resp.text()
        agent.heartbeats.unregister("a-task-that-hangs")
        async with aiohttp.ClientSession() as http, http.get(f"{agent.web_url}healthz") as resp:
            assert resp.status == 200
    assert "hangs" not in body
