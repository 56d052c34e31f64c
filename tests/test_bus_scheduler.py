"""One scheduler per bus: eight RTU devices on one simulated line, one of them dies.

The line runs at real RS-485 timing (38400 baud) on a pty; the scheduler and pymodbus
are the production ones. Poll rates are compared as ratios of counts over seconds-long
windows, never as wall-clock thresholds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest

from edgeagent.config import SiteConfig, parse_config
from edgeagent.devices.build import build_live, build_runners
from edgeagent.devices.scheduler import BusPoller
from edgeagent.errors import DeviceException, InvalidWrite
from edgeagent.live import Live
from edgeagent.model import Reading
from edgeagent.profiles import load_profile
from edgeagent.sim.modbus_rtu import RtuBusSimulator
from edgeagent.sim.modbus_units import LampControllerUnit, SimUnit, WaterLevelUnit
from edgeagent.sim.water_level import WaterLevelSimulator
from edgeagent.units import cancel_all
from tests.helpers import wait_until

POLL_S = 0.3
TIMEOUT_MS = 50
UNITS = range(1, 9)
BAUD = 38400


def _site(port: str, *, units: list[tuple[int, str]], inter_frame_ms: float | None = None) -> SiteConfig:
    bus: dict[str, object] = {
        "name": "line",
        "kind": "modbus_rtu",
        "port": port,
        "baudrate": BAUD,
        "timeout_ms": TIMEOUT_MS,
    }
    if inter_frame_ms is not None:
        bus["inter_frame_ms"] = inter_frame_ms
    return parse_config(
        {
            "gateway": {"id": "gw-test"},
            "buses": [bus],
            "devices": [
                {
                    "id": f"d{uid}",
                    "profile": profile,
                    "bus": "line",
                    "unit_id": uid,
                    "poll_interval_s": POLL_S,
                    "backoff_max_s": 1.0,
                    "asset": {"location": f"position {uid}", "owner": "tests"},
                }
                for uid, profile in units
            ],
        }
    )


class Harness:
    """A line simulator, the live picture, and the bus's runner, with poll times per device."""

    def __init__(self, sim: RtuBusSimulator, site: SiteConfig) -> None:
        self.sim = sim
        self.live = Live(gateway_id="gw-test")
        profiles = {d.profile: load_profile(d.profile) for d in site.devices}
        build_live(site, profiles, self.live)
        self.polls: dict[str, list[float]] = {d.id: [] for d in site.devices}
        # (new state, failed polls at that moment) per device, as the scheduler told them.
        self.transitions: dict[str, list[tuple[str, int]]] = {d.id: [] for d in site.devices}
        (runner,) = build_runners(site, profiles, self.live, self._on_readings, on_state=self._on_state)
        assert isinstance(runner, BusPoller)
        self.poller = runner

    def _on_readings(self, readings: list[Reading]) -> None:
        if readings:
            self.polls[readings[0].device].append(time.monotonic())

    def _on_state(self, device: str, state: str, previous: str, reason: str) -> None:
        self.transitions[device].append((state, self.live.devices[device].polls_failed))

    def rate(self, device: str, start: float, end: float) -> float:
        """Polls per second between two moments, from the poll times inside the window."""
        times = [t for t in self.polls[device] if start <= t <= end]
        assert len(times) >= 5, f"{device}: only {len(times)} polls in the window"
        return (len(times) - 1) / (times[-1] - times[0])


@contextlib.asynccontextmanager
async def running(
    units: dict[int, SimUnit], profiles: list[tuple[int, str]], **kwargs: object
) -> AsyncIterator[Harness]:
    async with RtuBusSimulator(units, baudrate=BAUD, line_timing=True) as sim:
        harness = Harness(sim, _site(sim.port, units=profiles, **kwargs))  # type: ignore[arg-type]
        task = asyncio.create_task(harness.poller.run(), name="poll:line")
        try:
            yield harness
        finally:
            await cancel_all([task])  # again until it stops: pymodbus's wait_for can swallow one
        assert sim.forbidden_reads == []


async def test_dead_device_does_not_slow_its_neighbours_and_recovers_by_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edgeagent.devices")
    units: dict[int, SimUnit] = {uid: WaterLevelUnit() for uid in UNITS}
    async with running(units, [(uid, "generic_water_level") for uid in UNITS]) as h:
        live = h.live.devices
        await wait_until(lambda: all(d.state.value == "online" for d in live.values()), 5, "all online")
        t0 = time.monotonic()
        await asyncio.sleep(3.0)
        killed_at = time.monotonic()
        units[5].silent = True
        await wait_until(lambda: live["d5"].state.value == "offline", 5, "d5 offline")
        assert "no answer from unit 5" in live["d5"].reason
        # Offline with the second failed poll in a row (offline_after_failures = 2), degraded with the first.
        assert h.transitions["d5"] == [("online", 0), ("degraded", 1), ("offline", 2)]
        await asyncio.sleep(3.0)
        t1 = time.monotonic()
        units[5].silent = False
        await wait_until(lambda: live["d5"].state.value == "online", 5, "d5 back online")

    for uid in UNITS:
        if uid == 5:
            continue
        before = h.rate(f"d{uid}", t0, killed_at)
        after = h.rate(f"d{uid}", killed_at, t1)
        assert after == pytest.approx(before, rel=0.10), f"d{uid}: {before:.2f}/s before, {after:.2f}/s after"
        assert before == pytest.approx(1 / POLL_S, rel=0.10)
    # Logged once when it went down and once when it came back, whatever the number of failed probes.
    messages = [r.getMessage() for r in caplog.records if "d5" in r.getMessage()]
    assert sum("is offline" in m for m in messages) == 1
    assert sum("is degraded" in m for m in messages) == 1
    assert sum("back online" in m for m in messages) == 1
    assert live["d5"].reason == ""


async def test_offline_device_is_probed_with_backoff_and_single_attempts() -> None:
    units: dict[int, SimUnit] = {1: WaterLevelUnit(), 2: WaterLevelUnit()}
    async with running(units, [(1, "generic_water_level"), (2, "generic_water_level")]) as h:
        units[2].silent = True
        await wait_until(lambda: h.live.devices["d2"].state.value == "offline", 5, "d2 offline")
        asked_before = sum(1 for unit, *_ in h.sim.log if unit == 2)
        await asyncio.sleep(2.0)
        probes = sum(1 for unit, *_ in h.sim.log if unit == 2) - asked_before
    # At the poll rate with a retry it would be ~13 requests in 2 s; backoff (0.3 .. 1 s)
    # and single attempts keep it low.
    assert 1 <= probes <= 7


async def test_write_goes_between_polls_and_is_read_back() -> None:
    units: dict[int, SimUnit] = {1: WaterLevelUnit(), 31: LampControllerUnit(dim_level=70)}
    async with running(units, [(1, "generic_water_level"), (31, "smart_lamp_controller")]) as h:
        lamp = h.live.devices["d31"]
        await wait_until(lambda: "dim_level" in lamp.points, 5, "first lamp poll")
        assert await h.poller.write("d31", "dim_level", 25) == "25 %"
        await wait_until(lambda: lamp.points["dim_level"].value == 25, 2, "the new level read back")
        assert units[31].tables["holding"][0] == 25
        assert await h.poller.write("d31", "mode", "emergency") == "emergency (3)"
        await wait_until(lambda: lamp.points["mode"].label == "emergency", 2, "the mode read back with its label")
        with pytest.raises(InvalidWrite, match="above the maximum"):
            await h.poller.write("d31", "dim_level", 101)
        with pytest.raises(InvalidWrite, match=r"not a Modbus device|no device"):
            await h.poller.write("nope", "dim_level", 1)
        units[31].check_write = _refuse  # type: ignore[method-assign]
        with pytest.raises(DeviceException, match=r"unit 31 .* exception 04 .* register write 0\+1"):
            await h.poller.write("d31", "dim_level", 50)
        assert h.live.devices["d1"].state.value == "online"


def _refuse(table: str, address: int, value: int) -> None:
    from edgeagent.sim.modbus_units import SimException

    raise SimException(0x04)


async def test_inter_frame_pause_is_kept_between_transactions() -> None:
    units: dict[int, SimUnit] = {uid: WaterLevelUnit() for uid in (1, 2, 3)}
    async with running(units, [(uid, "generic_water_level") for uid in (1, 2, 3)], inter_frame_ms=40) as h:
        await wait_until(lambda: len(h.sim.arrivals) >= 12, 10, "a dozen requests")
        gaps = [b - a for a, b in zip(h.sim.arrivals, h.sim.arrivals[1:], strict=False)]
    # Each request arrives at least the pause (plus the previous answer's time) after the one before.
    assert min(gaps) >= 0.040


async def test_close_after_poll_dials_anew_for_every_poll(sensor: WaterLevelSimulator) -> None:
    """The quirk some Modbus TCP gateways need: one connection per poll, closed after it."""
    accepted = 0
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        up_reader, up_writer = await asyncio.open_connection(sensor.host, sensor.port)
        for task in (asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))):
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    site = parse_config(
        {
            "gateway": {"id": "gw-test"},
            "buses": [
                {"name": "tcp", "kind": "modbus_tcp", "host": "127.0.0.1", "port": port, "close_after_poll": True}
            ],
            "devices": [
                {
                    "id": "wl",
                    "profile": "generic_water_level",
                    "bus": "tcp",
                    "unit_id": 1,
                    "poll_interval_s": 0.05,
                    "asset": {"location": "x", "owner": "y"},
                }
            ],
        }
    )
    live = Live(gateway_id="gw-test")
    profiles = {"generic_water_level": load_profile("generic_water_level")}
    build_live(site, profiles, live)
    (runner,) = build_runners(site, profiles, live, lambda readings: None)
    task = asyncio.create_task(runner.run(), name="poll:tcp")
    try:
        await wait_until(lambda: live.devices["wl"].polls_ok >= 5, 10, "five polls")
    finally:
        await cancel_all([task])
        proxy.close()
        await proxy.wait_closed()
        await asyncio.wait_for(asyncio.gather(*pipes, return_exceptions=True), 5)
    assert accepted >= live.devices["wl"].polls_ok >= 5
