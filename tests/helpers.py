"""Helpers shared by the tests: config files, waiting without sleeping blindly."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path


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
) -> str:
    """A complete site config as TOML text, for one bus of water-level sensors."""
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


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll a cheap in-memory predicate every 20 ms; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
