"""The rules in the running agent, against real simulators: Modbus TCP, an RS-485 line on a pty, a radar.

Each test drives the simulated world (a water level, fog, traffic, a sign that refuses
or reboots) and watches what the agent does: its alarm book, the records upstream, and
the sign controller's own registers.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from edgeagent.hub import ReadingsBatch, Topic
from edgeagent.model import Quality
from edgeagent.rules.actions import WRITE_MIN_INTERVAL_S
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.helpers import wait_until
from tests.rulesite import alarm_records, book_states, rules_of, running_agent, simulators, site_data, to_toml

pytestmark = pytest.mark.timeout(180)


async def play(sim: WaterLevelSimulator, phases: list[tuple[float, Callable[[], float]]]) -> list[float]:
    """Drive the simulated level through phases (seconds, level); return each phase's wall start time."""
    starts = []
    for seconds, level in phases:
        starts.append(time.time())
        end = time.monotonic() + seconds
        sim.fixed_level_mm = level()
        while time.monotonic() < end:
            await asyncio.sleep(0.05)
            sim.fixed_level_mm = level()
    return starts


def run_start(readings: list[tuple[float, float]], until: float, holds: Callable[[float], bool]) -> float:
    """When the run of readings for which ``holds`` is true, and which lasts up to ``until``, began."""
    start = None
    for t, v in sorted(readings):
        if t > until:
            break
        start = (start if start is not None else t) if holds(v) else None
    assert start is not None
    return start


async def test_a_rain_event_through_the_waterlogging_pack_closes_and_reopens_the_underpass_once(
    tmp_path: Path,
) -> None:
    """Acceptance 1: raised once after for_s, the coil written and read back, cleared once, no flapping."""
    rng = random.Random(5)
    async with simulators() as sims:
        data = site_data(sims, tmp_path / "state", include=["rules/waterlogging.toml"])
        async with running_agent(data) as agent:
            rules = rules_of(agent)
            await wait_until(lambda: agent.live.devices["sign-01"].state.value == "online", 10, "the sign online")
            starts = await play(
                sims.wl1,
                [
                    (3, lambda: 5.0),
                    (8, lambda: 150 + rng.uniform(-5, 5)),  # dancing around the raise level
                    (12, lambda: 175 + rng.uniform(-5, 5)),  # the peak: 10 s above 150 raises
                    (8, lambda: 150 + rng.uniform(-5, 5)),  # receding, dancing again: no clear
                    (0, lambda: 20.0),
                ],
            )
            flooded = "wl-01/underpass-flooded"
            await wait_until(lambda: book_states(agent).get(flooded) == "cleared", 40, "the clear, 30 s below 100")
            await wait_until(lambda: len(alarm_records(sims.ingest, flooded)) == 2, 10, "both transitions upstream")
            await asyncio.sleep(1.0)  # anything extra would show now
            records = alarm_records(sims.ingest, flooded)
            depths = [(r["t"], r["v"]) for r in alarm_records(sims.ingest, "wl-01/water_level") if "v" in r]
            writes = list(rules.writer.latencies)
            changes = list(sims.sign.changes)

    assert [r["vs"] for r in records] == ["raised", "cleared"], records
    assert records[0]["reason"].startswith("critical: depth > 150 for 10 s (depth 1")
    raised_at, cleared_at = records[0]["t"], records[1]["t"]
    assert starts[2] < raised_at < starts[3], "raised during the peak"
    assert cleared_at > starts[4] + 30
    # Exactly when the depth had held above 150 for 10 s (and never that long before), and below
    # 100 for 30 s: read off the sensor's own readings upstream (SenML times are in milliseconds).
    assert abs(raised_at - run_start(depths, raised_at, lambda v: v > 150) - 10) < 0.002
    assert abs(cleared_at - run_start(depths, cleared_at, lambda v: v < 100) - 30) < 0.002
    # The sign controller itself: its coil went on once and off once, each confirmed by reading it back.
    assert [(point, value) for _, point, value in changes] == [("closure", 1), ("closure", 0)]
    assert len(writes) == 2 and all(w.readback_s > 0 for w in writes)
    assert not [r for r in sims.ingest.records.values() if "action_failed" in r["n"]]
    events = [(r["n"], r["vs"]) for r in sims.ingest.records.values() if r["n"].endswith(("-closed", "-reopened"))]
    assert sorted(events) == [
        ("gw-test/wl-01/underpass-closed", "raise"),
        ("gw-test/wl-01/underpass-reopened", "clear"),
    ]


FOG_AND_SPEED = """
[[rules]]
name = "fog-fast-traffic"
inputs = { vis = "vis-01/visibility_1min", speed = "radar-01/approach_speed" }
when = "vis < 200 and max(speed, 3) > 22"
for_s = 1
clear_when = "vis > 250 or max(speed, 3) < 18"
clear_for_s = 1
severity = "major"
"""


async def test_fog_and_speed_on_two_buses_fire_only_while_both_hold(tmp_path: Path) -> None:
    """Acceptance 2: visibility on the RS-485 line, speed from the radar's own serial port."""
    async with simulators() as sims, running_agent(site_data(sims, tmp_path / "state", FOG_AND_SPEED)) as agent:
        alarm = "gateway/fog-fast-traffic"
        rules = rules_of(agent)

        async def hold(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                assert alarm not in book_states(agent) or book_states(agent)[alarm] == "cleared", "fired early"
                await asyncio.sleep(0.05)

        def evaluations() -> int:
            return int(rules.status()["rules"][0]["evaluations"])

        sims.radar.vehicle_speed_m_s = 25.0  # fast traffic, clear air
        await wait_until(lambda: evaluations() > 10, 10, "evaluations")
        await hold(4)
        sims.radar.vehicle_speed_m_s = 10.0  # slow traffic
        await hold(3.5)  # the 3 s speed window forgets the fast cars
        sims.vis.fixed_visibility_m = 120.0  # fog, slow traffic
        await hold(4)
        sims.radar.vehicle_speed_m_s = 25.0  # fog and fast traffic
        fired = time.monotonic()
        await wait_until(lambda: book_states(agent).get(alarm) == "raised", 10, "the raise")
        assert time.monotonic() - fired >= 1.0
        sims.vis.fixed_visibility_m = 5000.0  # the fog lifts
        await wait_until(lambda: book_states(agent).get(alarm) == "cleared", 10, "the clear")
        await wait_until(lambda: len(alarm_records(sims.ingest, alarm)) == 2, 10, "both upstream")
    assert [r["vs"] for r in alarm_records(sims.ingest, alarm)] == ["raised", "cleared"]


SILENT_SENSOR = """
[[rules]]
name = "deep-water"
subjects = { tags = ["underpass"] }
inputs = { depth = "water_level" }
when = "depth > 150"
for_s = 1
clear_when = "depth < 100"
clear_for_s = 1
stale_s = 2
severity = "critical"
"""


async def test_a_device_that_stops_answering_holds_its_alarm_raises_stale_and_resumes_when_back(
    tmp_path: Path,
) -> None:
    """Acceptance 3."""
    async with simulators() as sims:
        sims.wl1.fixed_level_mm, sims.wl2.fixed_level_mm = 200.0, 20.0
        async with running_agent(site_data(sims, tmp_path / "state", SILENT_SENSOR)) as agent:
            await wait_until(lambda: book_states(agent).get("wl-01/deep-water") == "raised", 10, "wl-01 flooded")
            sims.wl1.silent = sims.wl2.silent = True
            await wait_until(
                lambda: {"wl-01/deep-water:stale", "wl-02/deep-water:stale"} <= set(book_states(agent)), 10, "stale"
            )
            stale = agent.live.alarms.find("wl-01/deep-water:stale")
            assert stale is not None and "depth (wl-01/water_level): no reading for" in stale.message
            # While they are silent the level changes; nothing may follow from it.
            sims.wl1.fixed_level_mm, sims.wl2.fixed_level_mm = 20.0, 200.0
            await asyncio.sleep(4)
            assert book_states(agent)["wl-01/deep-water"] == "raised", "held, not cleared"
            assert "wl-02/deep-water" not in book_states(agent), "nothing raised"
            back = time.time()
            sims.wl1.silent = sims.wl2.silent = False
            await wait_until(lambda: book_states(agent).get("wl-01/deep-water:stale") == "cleared", 10, "fresh")
            await wait_until(lambda: book_states(agent).get("wl-01/deep-water") == "cleared", 10, "wl-01 clears")
            await wait_until(lambda: book_states(agent).get("wl-02/deep-water") == "raised", 10, "wl-02 raises")
            await wait_until(lambda: len(alarm_records(sims.ingest, "wl-02/deep-water")) == 1, 10, "upstream")
            await wait_until(lambda: len(alarm_records(sims.ingest, "wl-01/deep-water")) == 2, 10, "upstream")
    wl1 = alarm_records(sims.ingest, "wl-01/deep-water")
    wl2 = alarm_records(sims.ingest, "wl-02/deep-water")
    assert [r["vs"] for r in wl1] == ["raised", "cleared"] and [r["vs"] for r in wl2] == ["raised"]
    assert wl2[0]["t"] >= back + 1.0, "a sensor coming back raises only after for_s of known readings"
    stale_records = alarm_records(sims.ingest, "wl-01/deep-water:stale")
    assert [r["vs"] for r in stale_records] == ["raised", "cleared"]
    assert stale_records[0]["reason"].startswith("warning: depth (wl-01/water_level): no reading for")


CLOSE = """
[[rules]]
name = "close"
inputs = { depth = "wl-01/water_level" }
when = "depth > 150"
severity = "critical"
actions = [ { on = "raise", write = "sign-01/closure", value = 1 },
            { on = "clear", write = "sign-01/closure", value = 0 } ]
"""


async def test_a_refused_write_raises_action_failed_and_a_rebooted_sign_gets_its_value_again(tmp_path: Path) -> None:
    """Acceptance 4."""
    async with simulators() as sims, running_agent(site_data(sims, tmp_path / "state", CLOSE)) as agent:
        await wait_until(lambda: agent.live.devices["sign-01"].state.value == "online", 10, "the sign online")
        sims.sign.refuse_writes = 0x04  # device failure
        sims.wl1.fixed_level_mm = 200.0
        failed = "sign-01/action_failed:closure"
        await wait_until(lambda: book_states(agent).get(failed) == "raised", 10, "action_failed")
        alarm = agent.live.alarms.find(failed)
        assert alarm is not None and alarm.message.startswith("sign-01/closure: writing 1 failed:")
        assert "04" in alarm.message or "failure" in alarm.message, alarm.message
        sims.sign.refuse_writes = None  # the retry (after its backoff) goes through
        await wait_until(lambda: sims.sign.closure == 1, 10, "the coil on")
        await wait_until(lambda: book_states(agent).get(failed) == "cleared", 10, "action_failed cleared")
        writer = rules_of(agent).writer

        def confirmed() -> bool:
            return writer.confirmed.get(("sign-01", "closure")) == 1.0

        # A quick power dip: the controller comes back blank before anyone saw it gone.
        sims.sign.reboot()
        await wait_until(lambda: sims.sign.closure == 1 and confirmed(), 10, "re-asserted after a mismatch")
        # A longer outage: offline, rebooted, back online: re-asserted at once.
        sims.sign.silent = True
        await wait_until(lambda: agent.live.devices["sign-01"].state.value == "offline", 10, "the sign offline")
        sims.sign.reboot()
        sims.sign.silent = False
        await wait_until(lambda: sims.sign.closure == 1 and confirmed(), 10, "re-asserted after the reconnect")
        assert sims.sign.reboots == 2
        # A sign that acknowledges the write but does not switch: the read-back tells.
        sims.sign.stuck = True
        sims.wl1.fixed_level_mm = 20.0
        await wait_until(lambda: book_states(agent).get(failed) == "raised", 10, "action_failed again")
        alarm = agent.live.alarms.find(failed)
        assert alarm is not None and alarm.message == "sign-01/closure: wrote 0, read back 1", alarm.message
        sims.sign.stuck = False
        await wait_until(lambda: sims.sign.closure == 0, 10, "switched off on the retry")
        await wait_until(lambda: book_states(agent).get(failed) == "cleared", 10, "cleared again")
        await wait_until(lambda: len(alarm_records(sims.ingest, failed)) == 4, 10, "all upstream")
    records = alarm_records(sims.ingest, "sign-01/action_failed:closure")
    assert [r["vs"] for r in records] == ["raised", "cleared", "raised", "cleared"]
    assert records[0]["reason"].startswith("major: sign-01/closure: writing 1 failed")
    assert records[2]["reason"] == "major: sign-01/closure: wrote 0, read back 1"


PRIORITIES = """
[[rules]]
name = "fog-slow"
inputs = { vis = "vis-01/visibility_1min" }
when = "vis < 200"
priority = 10
actions = [ { on = "raise", write = "sign-01/speed_limit", value = 80 },
            { on = "clear", write = "sign-01/speed_limit", value = 0 } ]

[[rules]]
name = "flood-slower"
inputs = { depth = "wl-01/water_level" }
when = "depth > 150"
priority = 20
actions = [ { on = "raise", write = "sign-01/speed_limit", value = 40 },
            { on = "clear", write = "sign-01/speed_limit", value = 0 } ]
"""


async def test_the_higher_priority_rule_holds_the_point_whatever_the_order_of_firing(tmp_path: Path) -> None:
    """Acceptance 6, on the sign controller's own register."""
    async with simulators() as sims, running_agent(site_data(sims, tmp_path / "state", PRIORITIES)) as agent:
        sign = sims.sign
        for first in ("fog", "flood"):
            sign.changes.clear()
            if first == "fog":
                sims.vis.fixed_visibility_m = 120.0
                await wait_until(lambda: sign.speed_limit == 80, 10, "80 for the fog")
                sims.wl1.fixed_level_mm = 200.0
            else:
                sims.wl1.fixed_level_mm = 200.0
                await wait_until(lambda: sign.speed_limit == 40, 10, "40 for the flood")
                sims.vis.fixed_visibility_m = 120.0
            await wait_until(lambda: book_states(agent).get("gateway/fog-slow") == "raised", 10, "fog raised")
            await wait_until(lambda: book_states(agent).get("gateway/flood-slower") == "raised", 10, "flood")
            await asyncio.sleep(1.5)  # a wrong winner would be written by now
            assert sign.speed_limit == 40
            shown = [v for _, p, v in sign.changes if p == "speed_limit"]
            assert shown == ([80, 40] if first == "fog" else [40]), shown
            if first == "fog":  # two writes to one device: at least the write interval apart
                assert sign.changes[1][0] - sign.changes[0][0] >= WRITE_MIN_INTERVAL_S - 0.01
            sims.vis.fixed_visibility_m, sims.wl1.fixed_level_mm = 10_000.0, 0.0
            await wait_until(lambda: sign.speed_limit == 0, 10, "both cleared: the clear value")


REPLAYED = """
[[rules]]
name = "flooded"
subjects = { tags = ["underpass"] }
inputs = { depth = "water_level" }
when = "depth > 150"
for_s = 2
clear_when = "depth < 100"
clear_for_s = 2
severity = "critical"
actions = [ { on = "raise", write = "sign-01/closure", value = 1 },
            { on = "clear", write = "sign-01/closure", value = 0 } ]

[[rules]]
name = "rising"
subjects = { tags = ["underpass"] }
inputs = { depth = "water_level" }
when = "rate(depth, 2) > 40"
clear_when = "rate(depth, 2) < 10"
clear_for_s = 1
"""


def field_readings(batches: Sequence[ReadingsBatch]) -> list[tuple[float, str, str, float | None]]:
    """The trace of what devices read: a value of bad quality as an empty one; alarms and events left out."""
    return [
        (r.ts, r.device, r.point, float(r.value) if r.quality == Quality.GOOD and r.value is not None else None)
        for b in batches
        for r in b.readings
        if not isinstance(r.value, str) and r.device != "gateway"
    ]


async def test_rules_test_replay_gives_what_the_live_engine_gave_on_the_same_readings(tmp_path: Path) -> None:
    """Acceptance 7: one trace, recorded from the running agent, replayed by ``edgeagent rules test``."""
    rows: list[tuple[float, str, str, float | None]] = []
    live: list[tuple[str, str, str, float]] = []
    async with simulators() as sims:
        data = site_data(sims, tmp_path / "state", REPLAYED)
        async with running_agent(data) as agent:
            agent.hub.listen(Topic.READINGS, lambda batches: rows.extend(field_readings(batches)))
            agent.hub.listen(
                Topic.ALARM, lambda ts: live.extend((t.kind, t.source, t.state, t.ts) for t in ts if t.rule)
            )
            await play(
                sims.wl1,
                [(2, lambda: 20.0), (3, lambda: 200.0), (3, lambda: 50.0), (1, lambda: 200.0), (3, lambda: 50.0)],
            )
            changes = [(p, v) for _, p, v in sims.sign.changes]
    config = tmp_path / "site.toml"
    config.write_text(to_toml(data, REPLAYED))
    trace = tmp_path / "trace.csv"
    lines = ["ts,device,point,value"]
    lines += [f"{ts!r},{dev},{point},{'' if v is None else repr(v)}" for ts, dev, point, v in rows]
    trace.write_text("\n".join(lines) + "\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgeagent", "rules", "test", "--config", str(config), "--replay", str(trace),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    replayed = [json.loads(line) for line in out.decode().splitlines()]
    end = max(ts for ts, *_ in rows)
    kinds = {"stale": "raised", "fresh": "cleared"}
    from_replay = [
        (x["rule"] + (":stale" if x["state"] in kinds else ""), x["subject"], kinds.get(x["state"], x["state"]), x["t"])
        for x in replayed
        if x["kind"] == "alarm"
    ]
    from_live = [x for x in live if x[2] in ("raised", "cleared") and x[3] <= end]
    assert ("flooded", "wl-01", "raised") in [x[:3] for x in from_live], "the scenario raises"
    assert ("rising", "wl-01", "raised") in [x[:3] for x in from_live], "and a window fires"
    assert from_replay == from_live
    actions = [(x["point"], x["value"]) for x in replayed if x["kind"] == "action"]
    assert actions == changes == [("closure", 1), ("closure", 0)]


async def test_the_demo_cloudburst_lights_the_closure_sign_and_raises_the_flood_upstream(tmp_path: Path) -> None:
    """The demo runs the packs: its cloudburst switches the closure sign on and the alarm goes upstream.

    Switching it off again, 30 s after the water falls, is the same pack's clear: the rain
    event test above holds it to the second, so this one stops at the raise.
    """
    from edgeagent.agent import Agent
    from edgeagent.sim.demo import demo_config
    from edgeagent.sim.ingest import IngestServer
    from edgeagent.sim.site import RoadsideSite

    flooded = {"gw-demo-001/wl-01/underpass-flooded", "gw-demo-001/wl-03/underpass-flooded"}
    async with RoadsideSite(rain_period_s=60) as site, IngestServer() as ingest:
        config = demo_config(site=site, ingest_url=ingest.url, state_dir=tmp_path / "state", web_port=0)
        agent = Agent(config, ble_backend=site.ble_backend)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop), name="demo-agent")
        try:
            await wait_until(lambda: [v for _, p, v in site.sign.changes if p == "closure"][:1] == [1], 90, "on")
            await wait_until(
                lambda: any(r["n"] in flooded and r.get("vs") == "raised" for r in ingest.records.values()),
                15,
                "the flood alarm upstream",
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=15)
    assert [v for _, p, v in site.sign.changes if p == "closure"] == [1], "switched on once, nothing else yet"
