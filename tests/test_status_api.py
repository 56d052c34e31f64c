"""What the status API tells a technician is what is so, and its doors open to exactly who they should.

The figures come from ``status_builder`` over a real buffer (two destinations, one behind)
and live device entries; the doors are walked on a running agent with the API token, a
logged-in technician, and a sensor that has gone dark.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
from yarl import URL

from edgeagent.live import DeviceLive, Live, PointValue, UplinkLive
from edgeagent.model import Quality, Reading
from edgeagent.profiles import load_profile
from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from edgeagent.store import Store
from edgeagent.web.api import _explain
from edgeagent.web.status import status_builder
from tests.helpers import API_AUTH, TEST_API_TOKEN, wait_until
from tests.test_pipeline import running_agent
from tests.webclient import logged_in

SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Cache-Control")


async def test_the_store_shows_the_backlog_of_the_destination_furthest_behind(tmp_path: Path) -> None:
    live = Live(gateway_id="gw-test")
    for name in ("fast", "slow"):
        live.uplinks[name] = UplinkLive(name, "http", f"https://{name}.example.org/")
    async with Store(tmp_path / "b.sqlite", destinations=["fast", "slow"]) as store:
        oldest = time.time() - 600
        for i in range(10):
            store.append(Reading("wl-01", "water_level", oldest + i, 40.0 + i, "mm"))
        await store.flush()
        batch = await store.next_batch("fast", 4)
        assert batch is not None
        await store.ack(batch)  # "fast" has the first four; "slow" nothing
        status = await status_builder(live, store)()
    assert status["store"]["backlog"] == 10, "the backlog is the worst destination's"
    assert status["store"]["oldest_unsent_age_s"] >= 599, "the oldest reading some destination still lacks"
    ages = {u["name"]: u["oldest_unsent_age_s"] for u in status["uplinks"]}
    assert ages["slow"] >= 599 and 590 <= ages["fast"] < 597
    unsent = {u["name"]: u["unsent"] for u in status["uplinks"]}
    assert unsent == {"fast": 6, "slow": 10}


async def test_a_device_shows_its_latest_error_its_counts_and_values_with_their_age(tmp_path: Path) -> None:
    now = time.time()
    device = DeviceLive("lamp-7", "smart_lamp_controller", "line", {}, polls_ok=12, polls_failed=3)
    device.errors.extend([(now - 30, "no answer from unit 7"), (now - 5, "exception 02 from unit 7")])
    device.points["lamp_failure"] = PointValue(0, "flag", now - 20, Quality.GOOD)
    device.points["dim_level"] = PointValue(40, "%", now - 20, Quality.UNCERTAIN)
    live = Live(gateway_id="gw-test", devices={"lamp-7": device})
    profiles = {"smart_lamp_controller": load_profile("smart_lamp_controller")}
    async with Store(tmp_path / "b.sqlite") as store:
        status = await status_builder(live, store, profiles=lambda: profiles)()
    (shown,) = status["devices"]
    assert shown["last_error"] == "exception 02 from unit 7", "the latest error, not the oldest"
    assert (shown["polls_ok"], shown["polls_failed"]) == (12, 3)
    points = {p["name"]: p for p in shown["points"]}
    assert points["lamp_failure"]["fault"] and not points["lamp_failure"]["fault_set"], "a fault point at 0 is not set"
    assert points["dim_level"]["unit_shown"] == "%" and points["dim_level"]["quality"] == "uncertain"
    assert 19 <= points["dim_level"]["age_s"] < 60


def test_each_failure_is_explained_with_what_to_check() -> None:
    assert "wiring" in _explain("no answer from unit 5 within 0.2 s", "generic_water_level")
    assert "register map" in _explain("unit 5 answered exception 02 at holding 6", "generic_water_level")
    assert "converter's power" in _explain("cannot connect to 192.0.2.20:502: refused", "generic_water_level")
    assert "type, scale" in _explain("bad data: implausible decimals register value 40", "generic_water_level")


async def test_the_api_token_reads_only_whole_metrics_alone_may_be_open_and_errors_carry_the_headers(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    web = 'metrics_auth = "none"'
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url, web_extra=web) as agent:
        base = agent.web_url
        assert base is not None
        async with aiohttp.ClientSession() as http:
            for token in (TEST_API_TOKEN[:-1], TEST_API_TOKEN[:8], TEST_API_TOKEN + "0"):
                async with http.get(f"{base}api/status", headers={"Authorization": f"Bearer {token}"}) as resp:
                    assert resp.status == 401, f"a token that is not the token: {token!r}"
            async with http.get(f"{base}metrics") as resp:
                assert resp.status == 200, "metrics_auth = none opens /metrics"
            async with http.get(f"{base}api/status") as resp:
                assert resp.status == 401, "... and nothing else"
            for url, headers in ((f"{base}api/devices/nope", API_AUTH), (f"{base}static/nope.js", {})):
                async with http.get(url, headers=headers) as resp:
                    assert resp.status == 404
                    missing = [h for h in SECURITY_HEADERS if h not in resp.headers]
                    assert not missing, f"{url}: an error answer without {missing}"
            # A static file's name is a name: no way out of the folder, whatever the encoding.
            for name in ("..%2Fstatic%2Fapp.css", ".%2Fapp.js", "%2E%2E%2Fstatic%2Fapp.js"):
                async with http.get(URL(f"{base}static/{name}", encoded=True)) as resp:
                    assert resp.status == 404, f"/static/{name} answered {resp.status}"


async def test_a_technicians_repoll_of_a_dark_sensor_says_why_it_failed_and_every_action_is_audited(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    async with running_agent(tmp_path, modbus_port=sensor.port, ingest_url=ingest.url, timeout_ms=200) as agent:
        assert agent.web_url is not None
        await wait_until(lambda: agent.live.devices["wl-01"].polls_ok > 0, 10, "a first poll")
        async with logged_in(agent.web_url, tmp_path / "state") as page:
            sensor.silent = True
            status, answer = await page.post("/api/devices/wl-01/repoll")
            assert status == 200 and answer["result"].startswith("failed: "), answer
            assert "no answer" in answer["result"]
            status, _ = await page.post("/api/devices/wl-01/write", {"point": "water_level", "value": True})
            assert status == 400, "a JSON true is not a value to write"
            status, answer = await page.post("/api/devices/wl-01/write", {"point": "water_level", "value": 1})
            assert status == 200 and answer["result"].startswith("refused: "), answer
            status, audit = await page.get("/api/audit")
    assert status == 200
    actions = [(e["action"], e["target"], e["result"].split(":")[0]) for e in audit["entries"]]
    assert ("repoll", "wl-01", "failed") in actions
    assert ("write", "wl-01.water_level", "refused") in actions
