"""Helpers shared by the tests: config files, waiting without sleeping blindly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp

# The status page's bearer token in the configs site_toml writes.
TEST_API_TOKEN = "test-api-token-0123456789abcdef"
API_AUTH = {"Authorization": f"Bearer {TEST_API_TOKEN}"}


def api_token_line(state_dir: Path) -> str:
    """``api_token_file = ...`` for a [web] table, its file (holding TEST_API_TOKEN) written beside ``state_dir``."""
    token_file = state_dir.with_name(state_dir.name + ".api-token")
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(TEST_API_TOKEN + "\n")
    return f'api_token_file = "{token_file}"'


def site_toml(
    *,
    state_dir: Path,
    modbus_port: int,
    ingest_url: str,
    poll_interval_s: float = 0.1,
    web_port: int = 0,
    commit_interval_ms: int = 100,
    batch_max_readings: int = 50,
    retry_max_ms: int = 500,
    timeout_ms: int = 500,
    uplink_timeout_s: float = 2.0,
    unit_ids: tuple[int, ...] = (1,),
    device_tags: dict[int, list[str]] | None = None,
    extra: str = "",
    web_extra: str = "",
) -> str:
    """A complete site config as TOML text, for one bus of water-level sensors.

    The status page reads its API token from a file written beside ``state_dir``
    (``TEST_API_TOKEN``, which ``api_status`` sends).
    """
    # A relative state_dir is relative to a config folder not known here: no token then.
    token_line = api_token_line(state_dir) if state_dir.is_absolute() else ""
    devices = "".join(
        f"""
[[devices]]
id = "wl-{uid:02d}"
profile = "generic_water_level"
bus = "flood"
unit_id = {uid}
poll_interval_s = {poll_interval_s}
backoff_max_s = 1.0
tags = {json.dumps((device_tags or {}).get(uid, []))}
[devices.asset]
location = "test bench, position {uid}"
owner = "tests"
"""
        for uid in unit_ids
    )
    return f"""
[gateway]
id = "gw-test"
state_dir = "{state_dir}"

[store]
commit_interval_ms = {commit_interval_ms}
commit_max_readings = 1000

[web]
port = {web_port}
{token_line}
{web_extra}

[[buses]]
name = "flood"
kind = "modbus_tcp"
host = "127.0.0.1"
port = {modbus_port}
timeout_ms = {timeout_ms}
reconnect_min_ms = 50
reconnect_max_ms = 200
{devices}
[[uplinks]]
name = "platform"
kind = "http"
url = "{ingest_url}"
batch_max_readings = {batch_max_readings}
timeout_s = {uplink_timeout_s}
retry_min_ms = 50
retry_max_ms = {retry_max_ms}
{extra}
"""


async def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float = 10.0,
    what: str = "condition",
    *,
    fail_if: Callable[[], str | None] | None = None,
) -> None:
    """Poll a cheap in-memory predicate every 20 ms; fail with ``what`` on timeout.

    ``fail_if`` returns why the wait can no longer succeed (or None): the test then fails
    at once with that reason instead of waiting out ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if fail_if is not None and (why := fail_if()) is not None:
            raise AssertionError(f"gave up waiting for {what}: {why}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    """A TCP port nothing listens on now (for a receiver started later, or a status page)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def api_status(port: int) -> dict[str, Any]:
    """The agent's /api/status, as a monitoring script would fetch it (with the API token)."""
    async with (
        aiohttp.ClientSession(headers=API_AUTH) as http,
        http.get(f"http://127.0.0.1:{port}/api/status") as resp,
    ):
        data: dict[str, Any] = await resp.json()
        return data


async def wait_status(
    port: int, predicate: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = 30.0
) -> dict[str, Any]:
    """Poll /api/status until ``predicate`` holds; fail naming ``what`` and the store's state."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await api_status(port)
        if predicate(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: {status['store']}")
        await asyncio.sleep(0.1)


class _Uplink(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...


U = TypeVar("U", bound=_Uplink)


@contextlib.asynccontextmanager
async def uplink_running(uplink: U) -> AsyncIterator[U]:
    """An uplink started for a test and closed after it, whatever the test did."""
    await uplink.start()
    try:
        yield uplink
    finally:
        await uplink.close()
