"""The bus scheduler against real Modbus peers: retries, probes, bad data, a bus that cannot be reached, writes.

Modbus TCP units are a real pymodbus server, behind ``ConverterProxy`` where a test needs
requests swallowed and counted; writes go to a lamp controller on a simulated RS-485
line (a pty). The poller is the one the agent builds. Every rule is stated as counts
(requests per poll, failed polls at the moment a state changes) or as something that
must happen long before a device's interval would bring it about.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from edgeagent.config import parse_config
from edgeagent.devices.build import build_live, build_runners
from edgeagent.devices.scheduler import BusPoller
from edgeagent.errors import DeviceUnreachable
from edgeagent.live import BusLive, DeviceLive, Live
from edgeagent.model import Reading
from edgeagent.profiles import load_profile
from edgeagent.sim.converter import ConverterProxy
from edgeagent.sim.modbus_rtu import RtuBusSimulator
from edgeagent.sim.modbus_units import LampControllerUnit, SimUnit, WaterLevelUnit
from edgeagent.sim.pwd import PwdSimulator
from edgeagent.sim.water_level import RainEvent, WaterLevelSimulator
from edgeagent.units import cancel_all
from tests.helpers import free_port, wait_until


@dataclass(slots=True)
class Polled:
    """A running bus poller, its live picture, and what it told (state changes, readings)."""

    poller: BusPoller
    live: Live
    task: asyncio.Task[None]
    # (device, new state, polls_failed at that moment)
    transitions: list[tuple[str, str, int]] = field(default_factory=list)
    polls: dict[str, int] = field(default_factory=dict)
    poll_ends: list[float] = field(default_factory=list)  # when each good poll's readings came, any device

    def device(self, device_id: str) -> DeviceLive:
        return self.live.devices[device_id]

    @property
    def bus(self) -> BusLive:
        (bus,) = self.live.buses.values()
        return bus

    def states(self, device_id: str) -> list[tuple[str, int]]:
        return [(state, failed) for d, state, failed in self.transitions if d == device_id]


@contextlib.asynccontextmanager
async def polled(bus: dict[str, Any], devices: list[dict[str, Any]]) -> AsyncIterator[Polled]:
    site = parse_config(
        {
            "gateway": {"id": "gw-test"},
            "buses": [{"name": "bus", **bus}],
            "devices": [
                {"bus": "bus", "backoff_max_s": 0.3, "asset": {"location": "test bench", "owner": "tests"}, **d}
                for d in devices
            ],
        }
    )
    live = Live(gateway_id="gw-test")
    profiles = {d.profile: load_profile(d.profile) for d in site.devices}
    build_live(site, profiles, live)
    counts = {d.id: 0 for d in site.devices}
    transitions: list[tuple[str, str, int]] = []
    poll_ends: list[float] = []

    def on_readings(readings: list[Reading]) -> None:
        if readings:
            counts[readings[0].device] += 1
            poll_ends.append(time.monotonic())

    def on_state(device: str, state: str, previous: str, reason: str) -> None:
        transitions.append((device, state, live.devices[device].polls_failed))

    (runner,) = build_runners(site, profiles, live, on_readings, on_state=on_state)
    assert isinstance(runner, BusPoller)
    task = asyncio.create_task(runner.run(), name="poll:bus")
    try:
        yield Polled(runner, live, task, transitions, counts, poll_ends)
    finally:
        await cancel_all([task], deadline_s=5)  # again until it stops: pymodbus's wait_for can swallow one
        assert task.done(), "the bus poller did not stop within 5 s of being cancelled"


def tcp_bus(port: int, timeout_ms: int = 200) -> dict[str, Any]:
    return {
        "kind": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "timeout_ms": timeout_ms,
        "reconnect_min_ms": 50,
        "reconnect_max_ms": 200,
    }


def water_level(uid: int, poll_interval_s: float = 0.1) -> dict[str, Any]:
    return {"id": f"wl-{uid}", "profile": "generic_water_level", "unit_id": uid, "poll_interval_s": poll_interval_s}


@contextlib.asynccontextmanager
async def behind_converter(*units: int) -> AsyncIterator[tuple[WaterLevelSimulator, ConverterProxy]]:
    rain = RainEvent(period_s=10.0, start_phase=0.2, seed=7)
    async with (
        WaterLevelSimulator(unit_ids=units, rain=rain) as server,
        ConverterProxy(server.host, server.port) as proxy,
    ):
        yield server, proxy


async def test_a_lost_answer_is_retried_within_the_poll_and_costs_the_device_nothing() -> None:
    async with behind_converter(1) as (_, proxy), polled(tcp_bus(proxy.port), [water_level(1)]) as p:
        await wait_until(lambda: p.polls["wl-1"] >= 2, 10, "two good polls")
        proxy.dead_units = {1}  # the next request is swallowed ...
        await wait_until(lambda: proxy.swallowed_by_unit[1] >= 1, 5, "a request lost on the line")
        proxy.dead_units = set()  # ... and the retry, a timeout later, is answered
        polls = p.polls["wl-1"]
        await wait_until(lambda: p.polls["wl-1"] >= polls + 2, 10, "two more good polls")
    assert proxy.swallowed_by_unit[1] == 1
    assert p.device("wl-1").polls_failed == 0, "a retry that is answered makes a good poll"
    assert p.states("wl-1") == [("online", 0)]


async def test_an_offline_device_goes_offline_at_its_limit_and_costs_one_request_per_probe() -> None:
    async with behind_converter(1, 2) as (_, proxy):
        proxy.dead_units = {2}
        async with polled(tcp_bus(proxy.port), [water_level(1), water_level(2)]) as p:
            dead = p.device("wl-2")
            await wait_until(lambda: dead.state.value == "offline", 10, "wl-2 offline")
            # Two failed polls of two attempts each (retries = 1): the default limit is 2 polls.
            assert p.states("wl-2") == [("degraded", 1), ("offline", 2)]
            swallowed_at_offline = proxy.swallowed_by_unit[2]
            assert swallowed_at_offline == 4
            await wait_until(lambda: dead.polls_failed >= 5, 10, "three probes of the offline device")
            probes, requests = dead.polls_failed - 2, proxy.swallowed_by_unit[2] - swallowed_at_offline
            # Each probe of an offline device is a single request: it costs its neighbour nothing more.
            assert requests == probes, f"{requests} requests for {probes} probes"
            alive = p.device("wl-1")
            assert alive.state.value == "online" and alive.polls_failed == 0
            assert p.bus.transactions == alive.polls_ok, "one answered transaction per good poll"


async def test_a_degraded_device_keeps_its_rhythm_the_next_try_one_interval_on() -> None:
    loop = asyncio.get_running_loop()
    changes: dict[str, float] = {}
    async with behind_converter(1) as (_, proxy):
        proxy.dead_units = {1}
        async with polled(tcp_bus(proxy.port, timeout_ms=100), [water_level(1, poll_interval_s=1.0)]) as p:
            device = p.device("wl-1")
            await wait_until(lambda: device.state.value == "degraded", 5, "the first failed poll")
            changes["degraded"] = loop.time()
            await wait_until(lambda: device.state.value == "offline", 5, "the second failed poll")
            changes["offline"] = loop.time()
    # A failed poll takes two timeouts (0.2 s); the next is due one interval (1 s) after the first was.
    gap = changes["offline"] - changes["degraded"]
    assert gap >= 0.6, f"a degraded device was polled again {gap:.2f} s after a failure, not an interval on"


async def test_a_unit_gone_quiet_gets_a_neighbour_asked_at_once_and_the_connection_is_not_blamed() -> None:
    # The neighbour's own next poll is a minute away: only the question asked for the dead unit's sake tells.
    quiet = {**water_level(2), "retries": 3}  # four unanswered requests a poll, more than reopen_after_timeouts
    async with behind_converter(1, 2) as (_, proxy):
        proxy.dead_units = {2}
        async with polled(tcp_bus(proxy.port, timeout_ms=100), [water_level(1, poll_interval_s=60), quiet]) as p:
            await wait_until(lambda: p.device("wl-2").polls_failed >= 3, 10, "three failed polls of the quiet unit")
            assert p.device("wl-1").polls_ok >= 2, "the neighbour was asked besides its own schedule"
            assert (p.bus.restarts, proxy.accepted) == (0, 1), "one dead unit cost its neighbour the connection"


async def test_a_neighbour_answering_with_exceptions_marks_the_quiet_unit_dead_on_its_own() -> None:
    quiet = {**water_level(2), "retries": 3}
    async with behind_converter(1, 2) as (server, proxy):
        server.forbidden = {0x0006}  # every read of unit 1 is answered with exception 02
        proxy.dead_units = {2}
        async with polled(tcp_bus(proxy.port, timeout_ms=100), [water_level(1, poll_interval_s=60), quiet]) as p:
            await wait_until(lambda: p.device("wl-2").polls_failed >= 3, 10, "three failed polls of the quiet unit")
            assert "exception 02" in p.device("wl-1").reason
            # Its own first poll, and once as the witness: its exception answer proved the connection works.
            assert p.device("wl-1").polls_failed == 2, "the neighbour was asked again and again"
            assert (p.bus.restarts, proxy.accepted) == (0, 1)


async def test_each_new_connection_gets_exactly_reopen_after_timeouts_unanswered_requests() -> None:
    lone = {**water_level(1, poll_interval_s=0.05), "retries": 0}
    async with behind_converter(1) as (_, proxy), polled(tcp_bus(proxy.port, timeout_ms=100), [lone]) as p:
        await wait_until(lambda: p.polls["wl-1"] >= 2, 10, "the unit answering")
        proxy.dead_units = {1}  # nothing answers any more, on this connection or the next
        await wait_until(lambda: proxy.accepted >= 3, 20, "the connection dialled twice more")
        await wait_until(proxy.links[1].closed.is_set, 5, "the second connection closed")
        assert [link.unanswered for link in proxy.links[:2]] == [3, 3]
        assert p.bus.restarts >= 2


async def test_bad_data_is_a_failed_poll_with_bad_data_as_the_reason() -> None:
    async with WaterLevelSimulator(unit_ids=[1]) as sensor, polled(tcp_bus(sensor.port), [water_level(1)]) as p:
        device = p.device("wl-1")
        await wait_until(lambda: device.polls_ok >= 1, 10, "a good poll")
        sensor.fixed_level_mm = 0.0
        sensor.decimals = 40  # a decimals register no transmitter would hold
        await wait_until(lambda: device.state.value == "offline", 10, "the device offline on bad data")
    assert device.reason.startswith("bad data: ") and "decimals" in device.reason
    assert device.polls_failed >= 2
    assert p.states("wl-1") == [("online", 0), ("degraded", 1), ("offline", 2)]


async def test_a_bus_that_cannot_be_reached_is_shown_down_and_ok_again_once_it_answers() -> None:
    port = free_port()
    async with polled(tcp_bus(port), [water_level(1)]) as p:
        await wait_until(lambda: p.bus.state == "down", 10, "the bus shown down")
        assert p.device("wl-1").state.value in ("degraded", "offline")
        async with WaterLevelSimulator(unit_ids=[1], port=port):
            await wait_until(lambda: p.device("wl-1").state.value == "online", 10, "the device back")
            assert p.bus.state == "ok", "a device answers on it: the bus is ok"


async def test_the_pause_between_polls_on_a_serial_line_is_kept() -> None:
    async with PwdSimulator(sensor_ids=["1", "2"], response_delay_s=0.01) as line:
        bus = {"kind": "serial", "port": line.port, "bytesize": 8, "parity": "N", "inter_frame_ms": 150}
        pwd = {"profile": "vaisala_pwd22", "poll_interval_s": 0.02, "timeout_ms": 300}
        devices = [{**pwd, "id": "pwd-1", "sensor_id": "1"}, {**pwd, "id": "pwd-2", "sensor_id": "2"}]
        async with polled(bus, devices) as p:
            await wait_until(lambda: len(p.poll_ends) >= 5, 10, "five polls")
    gaps = [b - a for a, b in zip(p.poll_ends, p.poll_ends[1:], strict=False)]
    # Both sensors are always due: only the bus's pause (150 ms) stands between two polls.
    assert min(gaps) >= 0.15 - 0.01, f"polls {min(gaps) * 1000:.0f} ms apart on a line that asks for 150 ms"


@contextlib.asynccontextmanager
async def lamp_line(units: dict[int, SimUnit], devices: list[dict[str, Any]]) -> AsyncIterator[Polled]:
    async with RtuBusSimulator(units, baudrate=38400, line_timing=True) as line:
        bus = {"kind": "modbus_rtu", "port": line.port, "baudrate": 38400, "timeout_ms": 100}
        async with polled(bus, devices) as p:
            yield p


async def test_a_write_goes_before_due_polls_and_is_read_back_at_once_not_an_interval_later() -> None:
    lamp = LampControllerUnit(dim_level=70)
    units: dict[int, SimUnit] = {1: WaterLevelUnit(), 2: WaterLevelUnit(), 31: lamp}
    devices = [
        # Two sensors polled as fast as the line allows: some poll is always due.
        water_level(1, poll_interval_s=0.01),
        water_level(2, poll_interval_s=0.01),
        {"id": "lamp", "profile": "smart_lamp_controller", "unit_id": 31, "poll_interval_s": 60},
    ]
    async with lamp_line(units, devices) as p:
        await wait_until(lambda: "dim_level" in p.device("lamp").points, 10, "the lamp's first poll")
        assert p.device("lamp").polls_ok == 1
        try:
            shown = await asyncio.wait_for(p.poller.write("lamp", "dim_level", 25), 5)
        except TimeoutError:
            pytest.fail("a write waited more than 5 s on a bus where polls are always due")
        assert shown == "25 %" and lamp.tables["holding"][0] == 25
        # The lamp's next poll is a minute away: the read-back comes from the poll the write asks for.
        await wait_until(lambda: p.device("lamp").points["dim_level"].value == 25, 5, "the new level read back")
        polls_ok = p.device("lamp").polls_ok
        try:
            assert await asyncio.wait_for(p.poller.poll_now("lamp"), 5) is None
        except TimeoutError:
            pytest.fail("'re-poll now' waited more than 5 s for a device polled once a minute")
        assert p.device("lamp").polls_ok == polls_ok + 1


async def test_a_write_still_queued_when_the_bus_stops_fails_with_the_reason() -> None:
    stuck = WaterLevelUnit()
    stuck.silent = True  # every poll of it waits out its timeouts: the bus is busy
    units: dict[int, SimUnit] = {1: stuck, 31: LampControllerUnit()}
    devices = [water_level(1), {"id": "lamp", "profile": "smart_lamp_controller", "unit_id": 31}]
    async with RtuBusSimulator(units, baudrate=38400, line_timing=True) as line:
        bus = {"kind": "modbus_rtu", "port": line.port, "baudrate": 38400, "timeout_ms": 300}
        async with polled(bus, devices) as p:
            await wait_until(lambda: "dim_level" in p.device("lamp").points, 10, "the lamp's first poll")
            asked = line.requests
            await wait_until(lambda: line.requests > asked and line.log[-1][0] == 1, 10, "a poll of the silent unit")
            write = asyncio.create_task(p.poller.write("lamp", "dim_level", 10), name="write-behind-a-poll")
            await asyncio.sleep(0)  # queued behind the poll in progress
            await cancel_all([p.task])
            try:
                with pytest.raises(DeviceUnreachable, match="stopped before the write was sent"):
                    await asyncio.wait_for(write, 5)
            except TimeoutError:
                pytest.fail("a write queued on a bus that stopped was never answered")
