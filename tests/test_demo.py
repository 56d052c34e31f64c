"""The README's demo: up within seconds, live level in mm that changes, ingest count growing."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time

import aiohttp

from tests.webclient import post_login


async def _json(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_demo_shows_a_live_changing_level_and_growing_ingest() -> None:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgeagent",
        "demo",
        "--port",
        "0",
        "--duration-s",
        "60",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        status_url = ingest_url = page_url = password = None
        while status_url is None or ingest_url is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), timeout=15)).decode()
            assert line, "demo exited early"
            if m := re.search(r"Status page: (\S+)", line):
                page_url = m.group(1)
            if m := re.search(r"log in as demo with password (\S+)", line):
                password = m.group(1)
            if m := re.search(r"JSON: (\S+)\s+ingest stats: (\S+)", line):
                status_url, ingest_url = m.group(1), m.group(2)
        assert page_url is not None and password is not None, "the demo prints its page and a password"
        levels: list[float] = []
        counts: list[int] = []
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            assert (await post_login(http, page_url, "demo", password)).status == 303
            while time.monotonic() - started < 10 and (len(set(levels)) < 2 or len(set(counts)) < 2):
                status = await _json(http, status_url)
                device = next(d for d in status["devices"] if d["id"] == "wl-01")
                if device["state"] == "online":
                    (point,) = device["points"]
                    assert point["unit"] == "mm"
                    levels.append(point["value"])
                counts.append((await _json(http, ingest_url))["readings_received"])
                await asyncio.sleep(0.5)
        assert time.monotonic() - started < 10, f"not live within 10 s: levels={levels} counts={counts}"
        assert len(set(levels)) >= 2, "the level changes"
        assert counts[-1] > counts[0], "the ingest endpoint's count grows"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), timeout=10)
    assert code == 0
