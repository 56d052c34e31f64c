"""Serial line protocols over real ptys: a Vaisala PWD22 polled, a TI radar streaming.

The runners come from a site config through the same builder the agent uses; only the
sensors are simulated, on the master end of each pty. Ptys accept only 8N1, so the
buses override the PWD profile's 7E1.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import serial

from edgeagent.config import SiteConfig, parse_config
from edgeagent.devices.build import Runner, build_live, build_runners
from edgeagent.live import DeviceLive, Live
from edgeagent.model import Quality, Reading
from edgeagent.profiles import load_profile
from edgeagent.sim.pwd import PwdSimulator
from edgeagent.sim.radar import RadarSimulator
from tests.helpers import wait_until


def _site(bus: dict[str, Any], device: dict[str, Any]) -> SiteConfig:
    return parse_config(
        {
            "gateway": {"id": "gw-test"},
            "buses": [{"name": "line", "kind": "serial", **bus}],
            "devices": [{"id": "dev", "bus": "line", "asset": {"location": "test", "owner": "tests"}, **device}],
        }
    )


class Run:
    def __init__(self, site: SiteConfig) -> None:
        self.live = Live(gateway_id="gw-test")
        profiles = {d.profile: load_profile(d.profile) for d in site.devices}
        build_live(site, profiles, self.live)
        self.readings: list[Reading] = []
        (self.runner,) = build_runners(site, profiles, self.live, self.readings.extend)

    @property
    def device(self) -> DeviceLive:
        return self.live.devices["dev"]

    def latest(self, point: str) -> Reading:
        return next(r for r in reversed(self.readings) if r.point == point)


@contextlib.asynccontextmanager
async def running(site: SiteConfig) -> AsyncIterator[Run]:
    run = Run(site)
    runner: Runner = run.runner
    task = asyncio.create_task(runner.run(), name="runner-under-test")
    try:
        yield run
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _pwd_site(port: str, **device: Any) -> SiteConfig:
    return _site(
        {"port": port, "bytesize": 8, "parity": "N", "reconnect_min_ms": 100, "reconnect_max_ms": 200},
        {"profile": "vaisala_pwd22", "sensor_id": "1", "poll_interval_s": 0.2, "timeout_ms": 300, **device},
    )


@pytest.fixture
async def pwd() -> AsyncIterator[PwdSimulator]:
    async with PwdSimulator(sensor_ids=["1", "2"], response_delay_s=0.01) as sim:
        yield sim


async def test_pwd_message_7_values_with_units(pwd: PwdSimulator) -> None:
    async with running(_pwd_site(pwd.port)) as run:
        await wait_until(lambda: run.device.polls_ok >= 2, 5, "two polls")
    assert 100 <= run.latest("visibility_1min").value <= 20_000
    assert run.latest("visibility_1min").unit == "m"
    assert run.latest("temperature").unit == "Cel"
    assert run.latest("luminance").value is not None
    assert {r.quality for r in run.readings} == {Quality.GOOD}
    assert run.device.state.value == "online" and run.device.address == "id 1"


async def test_pwd_slashes_become_absent_values_never_zero(pwd: PwdSimulator) -> None:
    pwd.missing = {"visibility_1min_m", "luminance_cd_m2", "status"}
    async with running(_pwd_site(pwd.port)) as run:
        await wait_until(lambda: run.device.polls_ok >= 1, 5, "a poll")
    for point in ("visibility_1min", "luminance", "visibility_alarm", "hardware_status"):
        reading = run.latest(point)
        assert reading.value is None and reading.quality == Quality.MISSING, point
    assert run.latest("visibility_10min").value is not None


async def test_pwd_hardware_warning_flags_measurements_uncertain(pwd: PwdSimulator) -> None:
    pwd.hardware_status = 2
    async with running(_pwd_site(pwd.port)) as run:
        await wait_until(lambda: run.device.polls_ok >= 1, 5, "a poll")
    assert run.latest("visibility_1min").quality == Quality.UNCERTAIN
    assert run.latest("hardware_status").value == 2 and run.latest("hardware_status").quality == Quality.GOOD


async def test_pwd_garbled_answers_are_counted_and_retried(pwd: PwdSimulator) -> None:
    pwd.garble_next = 3
    async with running(_pwd_site(pwd.port)) as run:
        await wait_until(lambda: run.device.polls_ok >= 3, 10, "three good polls")
    assert run.device.framing_errors >= 3
    assert run.device.state.value == "online"


async def test_two_pwds_share_a_line_by_sensor_id(pwd: PwdSimulator) -> None:
    site = parse_config(
        {
            "gateway": {"id": "gw-test"},
            "buses": [{"name": "line", "kind": "serial", "port": pwd.port, "bytesize": 8, "parity": "N"}],
            "devices": [
                {
                    "id": f"pwd-{sid}",
                    "profile": "vaisala_pwd22",
                    "bus": "line",
                    "sensor_id": sid,
                    "poll_interval_s": 0.2,
                    "timeout_ms": 300,
                    "asset": {"location": "test", "owner": "tests"},
                }
                for sid in ("1", "2")
            ],
        }
    )
    live = Live(gateway_id="gw-test")
    profiles = {"vaisala_pwd22": load_profile("vaisala_pwd22")}
    build_live(site, profiles, live)
    (runner,) = build_runners(site, profiles, live, lambda readings: None)
    task = asyncio.create_task(runner.run(), name="pwd-line")
    try:
        await wait_until(lambda: all(live.devices[d].polls_ok >= 2 for d in ("pwd-1", "pwd-2")), 5, "both polled")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert pwd.answers >= 4


async def test_pwd_silent_goes_offline_then_recovers(pwd: PwdSimulator) -> None:
    async with running(_pwd_site(pwd.port, backoff_max_s=0.5)) as run:
        await wait_until(lambda: run.device.state.value == "online", 5, "online")
        pwd.silent = True
        await wait_until(lambda: run.device.state.value == "offline", 5, "offline")
        assert "no valid answer from PWD 1" in run.device.reason
        pwd.silent = False
        await wait_until(lambda: run.device.state.value == "online", 5, "back online")


async def test_missing_port_and_refused_settings_are_clear_reasons(pwd: PwdSimulator) -> None:
    async with running(_pwd_site("/dev/no-such-tty")) as run:
        await wait_until(lambda: run.device.state.value in ("degraded", "offline"), 5, "a failure")
        assert "cannot open /dev/no-such-tty" in run.device.reason
    # Settings a port refuses are said so, not a crash. (A pty refuses parity when nothing
    # else in the request changes: Linux applies what it can.)
    serial.Serial(pwd.port, baudrate=9600).close()
    site = _site(
        {"port": pwd.port, "bytesize": 8, "parity": "E"},
        {"profile": "vaisala_pwd22", "poll_interval_s": 0.2, "timeout_ms": 300},
    )
    async with running(site) as run:
        await wait_until(lambda: run.device.state.value in ("degraded", "offline"), 5, "a failure")
        assert "refuses these settings" in run.device.reason


# The radar ----------------------------------------------------------------------------


def _radar_site(port: str) -> SiteConfig:
    return _site(
        {"port": port, "reconnect_min_ms": 100, "reconnect_max_ms": 200},
        {"profile": "ti_mmwave_radar", "poll_interval_s": 0.3, "stale_after_s": 0.8},
    )


async def test_radar_frames_are_summed_up_per_interval() -> None:
    async with RadarSimulator(frame_period_s=0.02, seed=3) as radar, running(_radar_site(radar.port)) as run:
        await wait_until(lambda: run.device.polls_ok >= 4, 10, "four reports")
    frames = [r for r in run.readings if r.point == "frames"]
    assert sum(r.value for r in frames) >= 20
    assert all(r.unit == "count" for r in frames)
    counts = [r.value for r in run.readings if r.point == "target_count"]
    nearest = [r for r in run.readings if r.point == "nearest_range"]
    # An interval without a target has an absent nearest range, never 0 m.
    for count, near in zip(counts, nearest, strict=True):
        assert (near.value is None) == (count == 0)
        assert near.value is None or 2.0 <= near.value <= 61.0
    assert run.device.framing_errors == 0


async def test_radar_resyncs_after_garbage_and_cut_frames() -> None:
    async with (
        RadarSimulator(frame_period_s=0.02, seed=4, chunk_bytes=37) as radar,
        running(_radar_site(radar.port)) as run,
    ):
        await wait_until(lambda: run.device.polls_ok >= 1, 10, "a first report")
        for _ in range(5):
            radar.inject_garbage(b"\x02\x01\x04\x03\x06\x05garbage" + bytes(range(50)))
            await asyncio.sleep(0.05)
        good_before = sum(r.value for r in run.readings if r.point == "frames")
        await wait_until(
            lambda: sum(r.value for r in run.readings if r.point == "frames") >= good_before + 20, 10, "more frames"
        )
    assert run.device.framing_errors >= 3
    assert run.device.state.value == "online"


async def test_radar_silence_makes_it_offline_and_it_comes_back() -> None:
    async with RadarSimulator(frame_period_s=0.02) as radar, running(_radar_site(radar.port)) as run:
        await wait_until(lambda: run.device.state.value == "online", 10, "online")
        radar.silent = True
        await wait_until(lambda: run.device.state.value == "offline", 5, "offline")
        assert "no radar frames" in run.device.reason
        radar.silent = False
        await wait_until(lambda: run.device.state.value == "online", 5, "back online")
