"""A client of the status page as a browser is one: a user made with the CLI's code, the login form, cookies."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from edgeagent.web.auth import set_password

TEST_PASSWORD = "correct horse battery"


def origin_of(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"


async def login_form(http: aiohttp.ClientSession, base_url: str) -> str:
    """GET the login page (which sets its cookie) and return the CSRF token its form carries."""
    async with http.get(f"{base_url}login", ssl=False) as resp:
        assert resp.status == 200, resp.status
        page = await resp.text()
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


async def post_login(http: aiohttp.ClientSession, base_url: str, user: str, password: str) -> aiohttp.ClientResponse:
    csrf = await login_form(http, base_url)
    resp = await http.post(
        f"{base_url}login",
        data={"user": user, "password": password, "csrf": csrf},
        headers={"Origin": origin_of(base_url)},
        allow_redirects=False,
        ssl=False,
    )
    await resp.read()
    return resp


@dataclass
class PageClient:
    """A logged-in session: GET and POST as the page's own script does (Origin and CSRF header)."""

    http: aiohttp.ClientSession
    base_url: str
    csrf: str = ""

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(f"{self.base_url}{path.lstrip('/')}", ssl=False) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, body

    async def post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        headers = {"Origin": origin_of(self.base_url), "X-CSRF-Token": self.csrf}
        async with self.http.post(
            f"{self.base_url}{path.lstrip('/')}", json=body or {}, headers=headers, ssl=False
        ) as resp:
            data = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, data


@contextlib.asynccontextmanager
async def logged_in(
    base_url: str, state_dir: Path, *, user: str = "tech", role: str = "technician"
) -> AsyncIterator[PageClient]:
    """A user set in the agent's users file, logged in through the form."""
    set_password(state_dir / "web-users", user, TEST_PASSWORD, role)  # type: ignore[arg-type]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        resp = await post_login(http, base_url, user, TEST_PASSWORD)
        assert resp.status == 303, resp.status
        client = PageClient(http, base_url)
        status, session = await client.get("/api/session")
        assert status == 200, session
        client.csrf = session["csrf"]
        yield client
