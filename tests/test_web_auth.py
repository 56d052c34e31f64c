"""The page's doors, walked with a real agent: every route shut without a session, CSRF and Origin on
every change, a throttle on guessing that pauses and never bans, sessions that rotate and end."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from edgeagent.agent import Agent
from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from edgeagent.units import WebUnit
from edgeagent.web.auth import set_password
from tests.helpers import API_AUTH, wait_until
from tests.test_pipeline import running_agent
from tests.webclient import TEST_PASSWORD, logged_in, origin_of, post_login

OPEN = {"/healthz", "/login", "/static/{name}"}


def _routes(agent: Agent) -> list[tuple[str, str]]:
    """(method, path) of every route the running page has, with sample values for the variables."""
    unit = agent.units["web"]
    assert isinstance(unit, WebUnit) and unit.runner is not None
    out = []
    for route in unit.runner.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        if route.method != "HEAD":
            out.append((route.method, path))
    return out


def _sample(path: str) -> str:
    return path.replace("{id}", "wl-01").replace("{name}", "platform")


async def test_every_route_except_health_login_and_static_refuses_without_a_session(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url) as agent:
        base = agent.web_url
        assert base is not None
        routes = _routes(agent)
        assert len(routes) >= 14 and ("GET", "/api/status") in routes and ("GET", "/metrics") in routes
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            for method, path in routes:
                url = base.rstrip("/") + (path.replace("{name}", "app.js") if path in OPEN else _sample(path))
                for cookies in ({}, {"edgeagent_session": "made-up-session-id"}):
                    headers = {"Origin": origin_of(base)}
                    async with http.request(
                        method, url, headers=headers, cookies=cookies, allow_redirects=False
                    ) as resp:
                        if path in OPEN:  # a login without the form's token is refused too
                            assert resp.status == (200 if method == "GET" else 403), (method, path, resp.status)
                        elif path == "/":
                            assert resp.status == 303 and resp.headers["Location"] == "/login"
                        else:
                            assert resp.status == 401, (method, path, resp.status)
                            assert "wl-01" not in await resp.text()
            # The token reads the API and /metrics, and changes nothing.
            async with http.get(f"{base}api/status", headers=API_AUTH) as resp:
                assert resp.status == 200
            async with http.get(f"{base}metrics", headers=API_AUTH) as resp:
                assert resp.status == 200
            headers = {**API_AUTH, "Origin": origin_of(base)}
            async with http.post(f"{base}api/devices/wl-01/repoll", headers=headers, json={}) as resp:
                assert resp.status == 401
            async with http.get(f"{base}api/status", headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401


async def test_a_change_needs_the_csrf_token_and_this_pages_origin(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url) as agent:
        assert agent.web_url is not None
        await wait_until(lambda: agent.live.devices["wl-01"].polls_ok > 0, 10, "a first poll")
        async with logged_in(agent.web_url, tmp_path / "state") as page:
            url = f"{agent.web_url}api/devices/wl-01/repoll"
            good = {"Origin": origin_of(agent.web_url), "X-CSRF-Token": page.csrf}
            for headers in (
                {"Origin": good["Origin"]},  # no token
                {**good, "X-CSRF-Token": "not-the-token"},
                {**good, "Origin": "http://attacker.example"},
                {"X-CSRF-Token": page.csrf},  # no Origin
            ):
                async with page.http.post(url, headers=headers, json={}) as resp:
                    assert resp.status == 403, headers
            polls = agent.live.devices["wl-01"].polls_ok
            status, answer = await page.post("/api/devices/wl-01/repoll")
            assert status == 200 and answer["result"] == "ok: answered", answer
            assert agent.live.devices["wl-01"].polls_ok > polls
        # The login form itself: a foreign Origin, or a token that is not the form's, is refused.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(f"{agent.web_url}login") as resp:
                assert resp.status == 200
            for origin, token in (("http://attacker.example", None), (origin_of(agent.web_url), "forged")):
                data = {"user": "tech", "password": TEST_PASSWORD, "csrf": token or "x"}
                async with http.post(
                    f"{agent.web_url}login", data=data, headers={"Origin": origin}, allow_redirects=False
                ) as resp:
                    assert resp.status == 403
                    assert "edgeagent_session" not in resp.cookies


async def test_the_sixth_wrong_password_in_a_minute_is_refused_even_right_and_works_after_the_pause(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    pause_s = 2.0
    web = f"login_pause_s = {pause_s}\n"
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url, web_extra=web) as agent:
        base = agent.web_url
        assert base is not None
        async with logged_in(base, tmp_path / "state"):
            pass  # makes the user "tech"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            for _ in range(5):
                assert (await post_login(http, base, "tech", "wrong password")).status == 401
            locked_at = time.monotonic()
            refused = await post_login(http, base, "tech", TEST_PASSWORD)
            assert refused.status == 429 and "edgeagent_session" not in refused.cookies
            assert 1 <= int(refused.headers["Retry-After"]) <= pause_s + 1
            # The right password, tried again and again: refused until the pause ends, then let in.
            while (resp := await post_login(http, base, "tech", TEST_PASSWORD)).status == 429:
                assert time.monotonic() - locked_at < pause_s + 5, "still locked long after the pause"
            assert resp.status == 303
            assert time.monotonic() - locked_at >= pause_s * 0.9
            # Every failure is in the log without the password.
            lines = [r for r in agent.live.alarms.as_list()]  # the page raises no alarm for a guesser
            assert lines == []


async def test_sessions_rotate_at_login_end_at_logout_and_carry_safe_cookie_flags(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url) as agent:
        base = agent.web_url
        assert base is not None
        async with logged_in(base, tmp_path / "state") as page:
            first = page.http.cookie_jar.filter_cookies(URL(base))["edgeagent_session"].value
            again = await post_login(page.http, base, "tech", TEST_PASSWORD)
            header = next(h for h in again.headers.getall("Set-Cookie") if h.startswith("edgeagent_session="))
            assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/" in header
            assert "Secure" not in header  # plain HTTP on loopback: a Secure cookie would not come back
            second = page.http.cookie_jar.filter_cookies(URL(base))["edgeagent_session"].value
            assert second != first
            async with (
                aiohttp.ClientSession() as other,
                other.get(f"{base}api/status", cookies={"edgeagent_session": first}) as resp,
            ):
                assert resp.status == 401, "the session from before the new login is gone"
            page.csrf = (await page.get("/api/session"))[1]["csrf"]
            status, _ = await page.post("/logout")
            # A new password (edgeagent passwd) ends every session made with the old one.
            again = await post_login(page.http, base, "tech", TEST_PASSWORD)
            assert again.status == 303
            assert (await page.get("/api/status"))[0] == 200
            set_password(tmp_path / "state" / "web-users", "tech", "a brand new password", "technician")
            assert (await page.get("/api/status"))[0] == 401
            assert status == 200
            async with (
                aiohttp.ClientSession() as other,
                other.get(f"{base}api/status", cookies={"edgeagent_session": second}) as resp,
            ):
                assert resp.status == 401


async def test_a_viewer_cannot_write_or_acknowledge(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url) as agent:
        assert agent.web_url is not None
        async with logged_in(agent.web_url, tmp_path / "state", user="watcher", role="viewer") as page:
            status, _ = await page.post("/api/devices/wl-01/write", {"point": "water_level", "value": 1})
            assert status == 403
            status, _ = await page.post("/api/alarms/ack", {"source": "gateway", "kind": "x"})
            assert status == 403
            status, body = await page.get("/api/status")
            assert status == 200 and body["devices"][0]["id"] == "wl-01"


@pytest.mark.parametrize("users", [False, True])
async def test_with_no_user_the_login_page_says_how_to_make_one(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer, users: bool
) -> None:
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url) as agent:
        assert agent.web_url is not None
        if users:
            async with logged_in(agent.web_url, tmp_path / "state"):
                pass
        async with aiohttp.ClientSession() as http, http.get(f"{agent.web_url}login") as resp:
            page = await resp.text()
    assert ("edgeagent passwd --config" in page) is not users
    assert ('id="no-users"' in page) is not users
