"""A Modbus TCP connection that goes silent is dialled again; one dead unit does not cause that.

The converter in front of a real pymodbus server is ``ConverterProxy``: it can go mute on
its open connections (they stay open and carry nothing, as behind a NAT that dropped
them) while new connections work, and it can swallow every request for one unit id (a
unit that never answers behind a converter whose other units do). The scheduler,
transport and pymodbus client are the production ones. Rates are counts of polls over a
window, compared with the configured rate; nothing asserts wall-clock speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator

import pytest

from edgeagent.config import parse_config
from edgeagent.devices.build import build_live, build_runners
from edgeagent.devices.scheduler import BusPoller
from edgeagent.devices.silence import SilenceWatch, Verdict
from edgeagent.errors import ConfigError, DeviceTimeout, DeviceUnreachable
from edgeagent.live import BusLive, DeviceLive, Live
from edgeagent.model import Reading
from edgeagent.profiles import load_profile
from edgeagent.sim.converter import ConverterProxy
from edgeagent.sim.water_level import RainEvent, WaterLevelSimulator
from edgeagent.transports.modbus import ModbusTcpTransport
from edgeagent.units import cancel_all
from tests.helpers import wait_until

TIMEOUT_MS = 100


class Harness:
    """Units behind a converter, and what the agent's poller for the bus made of them, per device."""

    def __init__(self, proxy: ConverterProxy, live: Live) -> None:
        self.proxy = proxy
        self.live = live
        self.readings: dict[str, int] = {d: 0 for d in live.devices}

    @property
    def bus(self) -> BusLive:
        return self.live.buses["conv"]

    def device(self, device_id: str) -> DeviceLive:
        return self.live.devices[device_id]

    def on_readings(self, readings: list[Reading]) -> None:
        if readings:
            self.readings[readings[0].device] += 1


@contextlib.asynccontextmanager
async def converter(
    devices: list[dict[str, object]], *, units: list[int], bus: dict[str, object] | None = None
) -> AsyncIterator[Harness]:
    rain = RainEvent(period_s=10.0, start_phase=0.2, seed=7)
    async with (
        WaterLevelSimulator(unit_ids=units, rain=rain) as server,
        ConverterProxy(server.host, server.port) as proxy,
    ):
        site = parse_config(
            {
                "gateway": {"id": "gw-test"},
                "buses": [
                    {
                        "name": "conv",
                        "kind": "modbus_tcp",
                        "host": proxy.host,
                        "port": proxy.port,
                        "timeout_ms": TIMEOUT_MS,
                        "reconnect_min_ms": 50,
                        "reconnect_max_ms": 200,
                        **(bus or {}),
                    }
                ],
                "devices": [
                    {
                        "profile": "generic_water_level",
                        "bus": "conv",
                        "backoff_max_s": 1.0,
                        "asset": {"location": "viaduct cabinet", "owner": "tests"},
                        **d,
                    }
                    for d in devices
                ],
            }
        )
        live = Live(gateway_id="gw-test")
        profiles = {"generic_water_level": load_profile("generic_water_level")}
        build_live(site, profiles, live)
        harness = Harness(proxy, live)
        (runner,) = build_runners(site, profiles, live, harness.on_readings)
        assert isinstance(runner, BusPoller)
        task = asyncio.create_task(runner.run(), name="poll:conv")
        try:
            yield harness
        finally:
            await cancel_all([task])  # again until it stops: pymodbus's wait_for can swallow one


async def test_a_converter_that_goes_mute_on_its_open_connection_is_dialled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edgeagent")
    devices = [{"id": f"wl-{u}", "unit_id": u, "poll_interval_s": 0.1} for u in (1, 2)]
    async with converter(devices, units=[1, 2]) as h:
        await wait_until(lambda: all(h.readings[d] >= 3 for d in h.readings), 10, "both units answering")
        assert h.proxy.accepted == 1
        h.proxy.mute_open_connections()

        await wait_until(lambda: all(h.device(d).polls_failed >= 1 for d in h.readings), 5, "both units failing")
        failed_at = dict(h.readings)
        # Back by themselves, on a connection dialled anew: readings flow again.
        await wait_until(
            lambda: all(h.readings[d] >= failed_at[d] + 5 for d in h.readings), 10, "readings flowing again"
        )
        assert all(h.device(d).state.value == "online" for d in h.readings)
        assert h.bus.state == "ok"

    assert h.proxy.accepted == 2
    assert h.bus.restarts == 1
    muted = h.proxy.links[0]
    assert muted.muted and muted.closed.is_set()
    assert muted.unanswered == 3  # the default reopen_after_timeouts
    reopens = [r for r in caplog.records if r.name == "edgeagent.devices.scheduler" and r.levelno == logging.WARNING]
    warnings = [r.getMessage() for r in reopens]
    assert len(warnings) == 1, warnings
    assert "3 requests in a row unanswered (wl-1, wl-2)" in warnings[0]
    assert any("answers again after 1 reopen(s)" in r.getMessage() for r in caplog.records)


async def test_the_connection_is_reopened_after_exactly_the_configured_number_of_unanswered_requests() -> None:
    devices = [{"id": "wl-1", "unit_id": 1, "poll_interval_s": 0.05, "retries": 0}]
    async with converter(devices, units=[1], bus={"reopen_after_timeouts": 5}) as h:
        await wait_until(lambda: h.readings["wl-1"] >= 3, 10, "the unit answering")
        h.proxy.mute_open_connections()
        await wait_until(lambda: h.proxy.accepted == 2, 10, "a second connection")
        await wait_until(lambda: h.readings["wl-1"] >= 3 and h.device("wl-1").state.value == "online", 10, "back")
        # The muted connection was closed by the agent after exactly five unanswered requests.
        await wait_until(h.proxy.links[0].closed.is_set, 5, "the muted connection closed")
        assert h.proxy.links[0].unanswered == 5
        assert h.bus.restarts == 1


async def test_a_unit_that_never_answers_leaves_its_neighbours_their_rate_and_the_connection_open() -> None:
    poll_s = 0.2
    # The dead unit comes first and retries three times: four timeouts in a row, more than
    # reopen_after_timeouts (3), before any neighbour is asked, at start and on every poll.
    dead = {"id": "wl-9", "unit_id": 9, "poll_interval_s": poll_s, "retries": 3}
    neighbours = [{"id": f"wl-{u}", "unit_id": u, "poll_interval_s": poll_s} for u in (1, 2, 3)]
    names = [str(d["id"]) for d in neighbours]
    async with converter([dead, *neighbours], units=[1, 2, 3, 9]) as h:
        h.proxy.dead_units.add(9)
        await wait_until(lambda: all(h.readings[d] >= 1 for d in names), 10, "the neighbours answering")
        t0, at_t0 = time.monotonic(), {d: h.readings[d] for d in names}
        # The window spans the dead unit's degraded polls (four timeouts each) and its offline probes.
        await wait_until(lambda: h.proxy.swallowed_by_unit[9] >= 12, 20, "a dozen requests to the dead unit")
        t1, at_t1 = time.monotonic(), {d: h.readings[d] for d in names}

        assert h.device("wl-9").state.value == "offline"
        assert "no answer from unit 9" in h.device("wl-9").reason
        for d in names:
            ratio = (at_t1[d] - at_t0[d]) / (t1 - t0) * poll_s
            assert ratio >= 0.8, f"{d}: {ratio:.0%} of its configured rate next to a dead unit"
        assert h.bus.restarts == 0
        assert h.proxy.accepted == 1

        # The same bus still reopens a connection that answers nothing at all.
        h.proxy.mute_open_connections()
        await wait_until(lambda: h.bus.restarts == 1 and h.proxy.accepted == 2, 10, "the mute connection reopened")
        again = {d: h.readings[d] for d in names}
        await wait_until(lambda: all(h.readings[d] >= again[d] + 3 for d in names), 10, "neighbours polled again")
        assert h.bus.restarts == 1


async def test_a_converter_that_stays_mute_is_dialled_ever_more_slowly_until_it_answers() -> None:
    """Dialling does not prove a silent connection works: the backoff restarts only with an answer."""
    async with WaterLevelSimulator(unit_ids=[1]) as server, ConverterProxy(server.host, server.port) as proxy:
        transport = ModbusTcpTransport(
            proxy.host, proxy.port, timeout_s=TIMEOUT_MS / 1000, reconnect_min_s=0.2, reconnect_max_s=1.0
        )
        proxy.mute_new = True
        gate = transport._gate  # the delays are jittered: the count of failures is what grows them
        try:
            for n in (1, 2, 3):
                with pytest.raises(DeviceTimeout):
                    await transport.read("holding", 3, 4, 1)
                await transport.reopen("connection silent")
                assert gate.failures == n, "a dial that led to no answer must not reset the backoff"
                assert await _next_try_s(transport) <= min(1.0, 0.2 * 2 ** (n - 1))
            assert proxy.accepted == 3

            proxy.mute_new = False
            assert len(await transport.read("holding", 3, 4, 1)) == 4
            assert gate.failures == 0  # the answer reset it
            await transport.reopen("connection silent")
            assert gate.failures == 1
            assert await _next_try_s(transport) <= 0.2
        finally:
            await transport.close()


async def _next_try_s(transport: ModbusTcpTransport) -> float:
    """The delay the transport announces before it dials again, then wait until it may."""
    with pytest.raises(DeviceUnreachable, match="connection silent") as info:
        await transport.read("holding", 3, 4, 1)
    match = re.search(r"next try in ([0-9.]+) s", info.value.reason)
    assert match, info.value.reason
    await wait_until(lambda: transport._gate.wait_left() == 0, 5, "the reopen delay to pass")
    return float(match.group(1))


# The rule itself, event by event ----------------------------------------------------------


def test_noise_on_a_healthy_unit_beside_a_dead_one_is_not_silence() -> None:
    watch = SilenceWatch(3, ["dead", "a", "b"])
    for _ in range(4):
        assert watch.timed_out("dead") in (Verdict.WAIT, Verdict.ASK_ANOTHER)
    watch.answered("a")  # the connection works: "dead" is dead on its own
    assert watch.timed_out("dead") is Verdict.WAIT
    assert watch.timed_out("b") is Verdict.WAIT  # one lost answer on a healthy unit...
    assert watch.timed_out("dead") is Verdict.WAIT
    watch.answered("b")  # ...answered on its retry
    assert watch.run == 0


def test_one_unit_alone_going_quiet_gets_another_asked_before_the_connection_is_blamed() -> None:
    watch = SilenceWatch(2, ["fast", "hourly"])
    assert watch.timed_out("fast") is Verdict.WAIT
    assert watch.timed_out("fast") is Verdict.ASK_ANOTHER
    assert watch.witnesses() == {"hourly"}
    assert watch.timed_out("hourly") is Verdict.SILENT
    # The only device left that could answer: its own silence is the connection's.
    alone = SilenceWatch(2, ["only"])
    assert alone.timed_out("only") is Verdict.WAIT
    assert alone.timed_out("only") is Verdict.SILENT


def test_a_dead_unit_that_answers_again_counts_again() -> None:
    watch = SilenceWatch(2, ["a", "b"])
    watch.timed_out("a")
    watch.answered("b")
    assert "a" in watch.dead
    watch.answered("a")
    assert "a" not in watch.dead
    assert watch.timed_out("a") is Verdict.WAIT
    assert watch.timed_out("b") is Verdict.SILENT


@pytest.mark.parametrize("value", [0, 101])
def test_reopen_after_timeouts_out_of_range_is_refused_with_its_key_path(value: int) -> None:
    data = {
        "gateway": {"id": "gw"},
        "buses": [{"name": "conv", "kind": "modbus_tcp", "host": "192.0.2.20", "reopen_after_timeouts": value}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, file="site.toml")
    assert any(str(p).startswith("site.toml: buses[0].reopen_after_timeouts: ") for p in info.value.problems)
