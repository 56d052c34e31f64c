"""The technician's page: its weight, its first paint on a phone, and what 5 live browsers cost the agent.

- weight: every file the page loads (HTML, script, stylesheet, uPlot), raw and gzip -9;
- paint: first contentful paint of the logged-in overview at 360x740 in Debian's headless
  Chromium (Playwright, launched from /usr/bin/chromium; nothing is downloaded), median of
  ``--loads`` loads, against the peer workload below;
- stream: the agent (``edgeagent run``, a real process) under the peer workload of
  ``peer_workload.py`` (10 Modbus TCP devices x 50 registers every 100 ms, HTTP uplink),
  with ``--browsers`` pages logged in and streaming live for ``--seconds``: its CPU (% of
  one core) and RSS sampled every ``--sample-s``, first against last (no growth), and the
  points delivered upstream per second (the workload is not slowed).

Run: python bench/page.py [--seconds 600] [--browsers 5] [--loads 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_workload as peer

from edgeagent.web.auth import set_password

PASSWORD = "bench password 1"
PAGE_FILES = ("index.html", "app.js", "app.css", "uplot.iife.min.js", "uplot.min.css")


def weight() -> None:
    static = resources.files("edgeagent.web") / "static"
    total_raw = total_gz = 0
    print("file                   bytes   gzip -9")
    for name in PAGE_FILES:
        data = (static / name).read_bytes()
        packed = len(gzip.compress(data, 9))
        total_raw, total_gz = total_raw + len(data), total_gz + packed
        print(f"{name:20s} {len(data):7d}  {packed:8d}")
    print(f"{'page total':20s} {total_raw:7d}  {total_gz:8d}  ({total_gz / 1024:.1f} KiB over the wire if compressed)")


async def _login(context: Any, base: str) -> Any:
    page = await context.new_page()
    await page.goto(f"{base}login")
    await page.fill("input[name=user]", "tech")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_selector("[data-device]")
    return page


async def paint(base: str, loads: int) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        context = await browser.new_context(viewport={"width": 360, "height": 740})
        page = await _login(context, base)
        fcp, ready = [], []
        for _ in range(loads):
            started = time.monotonic()
            await page.goto(base)
            await page.wait_for_selector("[data-device]")
            ready.append((time.monotonic() - started) * 1000)
            value = await page.evaluate(
                "performance.getEntriesByType('paint').filter(e => e.name === 'first-contentful-paint')"
                ".map(e => e.startTime)[0]"
            )
            fcp.append(float(value))
        await browser.close()
    print(
        f"360x740 overview, {loads} loads: first contentful paint median {statistics.median(fcp):.0f} ms "
        f"(min {min(fcp):.0f}, max {max(fcp):.0f}); devices shown after a median {statistics.median(ready):.0f} ms"
    )


async def stream(base: str, pid: int, rx: int, args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        pages = []
        for _ in range(args.browsers):
            context = await browser.new_context(viewport={"width": 360, "height": 740})
            pages.append(await _login(context, base))
        print(f"{args.browsers} browsers streaming the overview for {args.seconds:g} s")
        print("    t_s  cpu_%_of_one_core  rss_mb  delivered/s  page_updates")
        t0 = last_t = time.monotonic()
        cpu0 = last_cpu = peer.cpu_seconds(pid)
        got0 = last_got = int(peer.get(rx, "/mark")["readings"])
        rss = [peer.proc_field(pid, "VmRSS:", "status") / 1024]
        cpus = []
        while (now := time.monotonic()) - t0 < args.seconds:
            await asyncio.sleep(min(args.sample_s, args.seconds - (now - t0)))
            now, cpu = time.monotonic(), peer.cpu_seconds(pid)
            got = int(peer.get(rx, "/stats")["readings"])
            rss.append(peer.proc_field(pid, "VmRSS:", "status") / 1024)
            updated = await pages[0].locator("#updated").inner_text()
            cpus.append(100 * (cpu - last_cpu) / (now - last_t))
            rate = (got - last_got) / (now - last_t)
            print(f"  {now - t0:5.0f}  {cpus[-1]:17.1f}  {rss[-1]:6.1f}  {rate:11.0f}  {updated}")
            last_t, last_cpu, last_got = now, cpu, got
        span = last_t - t0
        await browser.close()
    half = len(rss) // 2
    print(
        f"summary: {args.browsers} live browsers, {span:.0f} s: "
        f"agent CPU {100 * (last_cpu - cpu0) / span:.1f} % of one core (samples {min(cpus):.1f}-{max(cpus):.1f}); "
        f"RSS {rss[0]:.1f} MB at start, {max(rss):.1f} max, {rss[-1]:.1f} at end "
        f"(mean {statistics.mean(rss[: half + 1]):.1f} in the first half, "
        f"{statistics.mean(rss[half:]):.1f} in the second); "
        f"{(last_got - got0) / span:.0f} points/s delivered upstream"
    )


async def baseline(pid: int, rx: int, seconds: float) -> None:
    t0, cpu0 = time.monotonic(), peer.cpu_seconds(pid)
    got0 = int(peer.get(rx, "/mark")["readings"])
    await asyncio.sleep(seconds)
    span = time.monotonic() - t0
    got = int(peer.get(rx, "/stats")["readings"])
    rss = peer.proc_field(pid, "VmRSS:", "status") / 1024
    print(
        f"no browser, {span:.0f} s: agent CPU {100 * (peer.cpu_seconds(pid) - cpu0) / span:.1f} % of one core, "
        f"RSS {rss:.1f} MB, {(got - got0) / span:.0f} points/s delivered"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--browsers", type=int, default=5)
    parser.add_argument("--loads", type=int, default=10)
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--baseline-s", type=float, default=60.0)
    parser.add_argument("--warmup-s", type=float, default=10.0)
    args = parser.parse_args()
    weight()
    servers = subprocess.Popen(
        [sys.executable, peer.__file__, "--serve", str(peer.DEVICES)], stdout=subprocess.PIPE, text=True
    )
    assert servers.stdout is not None
    info: dict[str, Any] = json.loads(servers.stdout.readline())
    web = peer.free_port()
    with tempfile.TemporaryDirectory(prefix="page-bench-") as tmp:
        folder = Path(tmp)
        (folder / "drivers").mkdir()
        (folder / "drivers" / "bench_io_50.toml").write_text(peer.PROFILE)
        (folder / "state").mkdir(mode=0o700)
        set_password(folder / "state" / "web-users", "tech", PASSWORD, "technician")
        config = folder / "site.toml"
        config.write_text(peer.site_config(folder, info, "http").replace("[web]\nport = 0", f"[web]\nport = {web}"))
        env = {**os.environ, "EDGEAGENT_DRIVERS_PATH": str(folder / "drivers")}
        agent = subprocess.Popen(
            [sys.executable, "-m", "edgeagent", "run", "--config", str(config), "--log-level", "WARNING"], env=env
        )
        try:
            time.sleep(args.warmup_s)
            if agent.poll() is not None:
                raise SystemExit("the agent exited during warm-up")
            base = f"http://127.0.0.1:{web}/"
            print(
                f"peer workload: {peer.DEVICES} devices x {peer.REGISTERS} registers every {peer.POLL_S * 1000:.0f} ms"
            )
            asyncio.run(baseline(agent.pid, info["ingest_port"], args.baseline_s))
            asyncio.run(paint(base, args.loads))
            asyncio.run(stream(base, agent.pid, info["ingest_port"], args))
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=15)
            except subprocess.TimeoutExpired:
                agent.kill()
            servers.terminate()
            servers.wait(timeout=10)


if __name__ == "__main__":
    main()
