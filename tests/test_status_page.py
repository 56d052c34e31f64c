"""The status page as a technician's phone shows it: rendered by headless Chromium."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.helpers import wait_until
from tests.test_pipeline import running_agent

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="edgeagent-chromium-") as profile:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


async def test_page_renders_devices_buffer_and_uplink(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url) as agent:
        await wait_until(lambda: len(ingest.records) >= 3, 10, "data upstream")
        url = agent.web_url
        assert url is not None
        shot = tmp_path / "status.png"
        dom, _ = await asyncio.gather(
            asyncio.to_thread(_chromium, "--dump-dom", url),
            asyncio.to_thread(_chromium, "--window-size=412,915", f"--screenshot={shot}", url),
        )
    html = dom.stdout
    assert 'data-device="wl-01"' in html, dom.stderr[-2000:]
    assert 'class="card online"' in html
    assert " mm " in html and "water_level" in html
    assert "gw-test" in html and "1/1 devices online" in html
    assert "platform" in html and "last result: ok" in html
    assert "cannot reach the agent" not in html
    assert shot.stat().st_size > 10_000
    # Keep a copy for a person to look at (CI artefact; ignored by git).
    out = Path(__file__).resolve().parents[1] / ".test-artifacts"
    out.mkdir(exist_ok=True)
    shutil.copy(shot, out / "status-page-phone.png")
