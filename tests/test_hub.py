"""The hub: one fan-out for everything observed; a slow consumer never holds up a bus."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from edgeagent.config import parse_config
from edgeagent.devices.build import build_live, build_runners
from edgeagent.devices.scheduler import BusPoller
from edgeagent.hub import DeviceStateChange, Hub, ReadingsBatch, Topic
from edgeagent.live import AlarmBook, Live
from edgeagent.model import Reading
from edgeagent.profiles import load_profile
from edgeagent.sim.water_level import WaterLevelSimulator
from edgeagent.units import cancel_all
from tests.helpers import wait_until

POLL_S = 0.02


def _reading(i: int) -> Reading:
    return Reading("dev", "p", 1_800_000_000 + i, float(i), "mm")


def test_listeners_get_each_batch_and_a_failing_one_does_not_silence_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = Hub()
    got: list[ReadingsBatch] = []

    def broken(batches: object) -> None:
        raise RuntimeError("consumer bug")

    hub.listen(Topic.READINGS, broken)
    hub.listen(Topic.READINGS, got.extend)
    with caplog.at_level(logging.ERROR):
        for i in range(3):
            hub.readings("dev", [_reading(i)])
    assert [b.readings[0].value for b in got] == [0.0, 1.0, 2.0]
    assert sum("listener failed" in r.message for r in caplog.records) == 1, "logged once, not per batch"
    assert hub.published[Topic.READINGS] == 3


async def test_a_queue_is_bounded_drops_the_oldest_and_counts_them() -> None:
    hub = Hub()
    sub = hub.queue(Topic.READINGS, maxlen=10)
    for i in range(25):
        hub.readings("dev", [_reading(i)])
    assert len(sub) == 10 and sub.dropped == 15
    _, first = await sub.get()
    assert first.readings[0].value == 15.0, "the newest are kept"
    sub.close()
    hub.readings("dev", [_reading(99)])
    assert len(sub) == 9, "a closed queue hears nothing more"


async def test_a_keyed_queue_keeps_only_the_latest_state_of_each_device() -> None:
    hub = Hub()
    sub = hub.queue(Topic.DEVICE_STATE, maxlen=10, key=lambda c: c.device)
    hub.device_state("a", "degraded", "online", "timeout")
    hub.device_state("b", "offline", "online", "unplugged")
    hub.device_state("a", "offline", "degraded", "timeout")
    assert len(sub) == 2 and sub.coalesced == 1 and sub.dropped == 0
    states: list[DeviceStateChange] = [(await sub.get())[1] for _ in range(2)]
    assert [(s.device, s.state) for s in states] == [("b", "offline"), ("a", "offline")]


def test_the_alarm_book_is_bounded_and_counts_repeats() -> None:
    book = AlarmBook(limit=5)
    for i in range(3):
        book.raise_("gateway", "store_corrupt", f"time {i}")
    assert len(book) == 1 and book[0]["times"] == 3 and book[0]["message"] == "time 2"
    book.clear("gateway", "store_corrupt")
    for i in range(10):
        book.raise_(f"dev-{i}", "flooded", "water")
    assert len(book) == 5, "bounded however many alarms come and go"
    assert all(a["active"] for a in book.as_list()), "cleared alarms make room first"


async def test_a_slow_live_stream_subscriber_does_not_slow_polling() -> None:
    """Acceptance: bus rate unchanged within 5%, the slow queue bounded, its drops counted."""
    async with WaterLevelSimulator(unit_ids=[1, 2]) as sim:
        site = parse_config(
            {
                "gateway": {"id": "gw-test"},
                "buses": [{"name": "flood", "kind": "modbus_tcp", "host": "127.0.0.1", "port": sim.port}],
                "devices": [
                    {
                        "id": f"wl-{uid}",
                        "profile": "generic_water_level",
                        "bus": "flood",
                        "unit_id": uid,
                        "poll_interval_s": POLL_S,
                        "asset": {"location": "bench", "owner": "tests"},
                    }
                    for uid in (1, 2)
                ],
            }
        )
        live = Live(gateway_id="gw-test")
        profiles = {d.profile: load_profile(d.profile) for d in site.devices}
        build_live(site, profiles, live)
        hub = Hub()
        stored: list[Reading] = []
        hub.listen(Topic.READINGS, lambda batches: stored.extend(r for b in batches for r in b.readings))
        (runner,) = build_runners(site, profiles, live, lambda rs: hub.readings(rs[0].device, rs))
        assert isinstance(runner, BusPoller)
        task = asyncio.create_task(runner.run(), name="poll:flood")
        try:

            async def seconds_for(polls: int) -> float:
                start_n, start_t = len(stored), time.monotonic()
                await wait_until(lambda: len(stored) >= start_n + polls, 30, f"{polls} polls")
                return time.monotonic() - start_t

            await wait_until(lambda: len(stored) >= 20, 10, "polling under way")
            alone = await seconds_for(200)
            slow = hub.queue(Topic.READINGS, maxlen=50)  # a browser that never reads
            with_slow = await seconds_for(200)
        finally:
            # Cancelled until it stops: on 3.11 pymodbus's wait_for can swallow one cancellation.
            await cancel_all([task])
    assert with_slow <= alone * 1.05, f"200 polls took {alone:.2f} s alone, {with_slow:.2f} s with a slow reader"
    assert len(slow) == 50, "its queue is bounded"
    assert slow.dropped >= 150, "and what it missed is counted"
