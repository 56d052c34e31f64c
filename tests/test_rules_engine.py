"""The rules engine on a virtual clock: raises, clears, unknowns, arbitration, persistence, reloads."""

from __future__ import annotations

import datetime
import random
from zoneinfo import ZoneInfo

from edgeagent.rules.state import restore, restore_windows, snapshot, windows_snapshot
from tests.rulekit import T0, Recorder, bound

FLOOD = """
[[rules]]
name = "underpass-flooded"
subjects = { tags = ["underpass"] }
inputs = { depth = "water_level" }
when = "depth > 150"
for_s = 30
clear_when = "depth < 100"
clear_for_s = 60
severity = "critical"
actions = [ { on = "raise", write = "sign-01/closure", value = 1 },
            { on = "clear", write = "sign-01/closure", value = 0 } ]
"""


def feed(engine: object, t: float, value: float | None, device: str = "wl-01", good: bool = True) -> None:
    engine.on_reading(device, "water_level", value, good and value is not None, t)  # type: ignore[attr-defined]


def test_a_rain_event_raises_once_never_flaps_on_noise_and_clears_once() -> None:
    rec = Recorder()
    engine = rec.engine(bound(FLOOD))
    rng = random.Random(3)
    t = T0
    phases = [
        (120, lambda: rng.uniform(0, 5)),  # dry
        (300, lambda: 150 + rng.uniform(-5, 5)),  # five minutes dancing around the raise level
        (120, lambda: 170 + rng.uniform(-5, 5)),  # peak
        (300, lambda: 150 + rng.uniform(-5, 5)),  # receding: around the raise level again
        (300, lambda: 100 + rng.uniform(-5, 5)),  # around the clear level
        (180, lambda: 50 + rng.uniform(-5, 5)),  # well below
    ]
    starts, readings = [], []
    for seconds, level in phases:
        starts.append(t)
        for _ in range(seconds):
            t += 1
            readings.append((t, round(level(), 1)))
            feed(engine, *readings[-1])
    alarms = rec.alarms()
    assert [(r, s, st) for _, r, s, st in alarms] == [
        ("underpass-flooded", "wl-01", "raised"),
        ("underpass-flooded", "wl-01", "cleared"),
    ]
    raised_at, cleared_at = alarms[0][0], alarms[1][0]
    assert starts[2] < raised_at <= starts[2] + 31, "raised 30 s into the peak, not during the dance"
    last_high = max(ts for ts, v in readings if v >= 100)
    assert cleared_at == last_high + 1 + 60, "cleared 60 s after the level stayed below 100"
    assert rec.intents() == [
        ("underpass-flooded", "sign-01/closure", 1.0),
        ("underpass-flooded", "sign-01/closure", 0.0),
    ]


def test_a_condition_that_holds_at_start_raises_once_after_for_s_and_readings_a_millisecond_apart_add_nothing() -> None:
    rec = Recorder()
    engine = rec.engine(bound(FLOOD))
    feed(engine, T0 + 1, 200)
    feed(engine, T0 + 1.001, 201)  # a duplicate reading a millisecond later
    engine.advance(T0 + 30.9)
    assert rec.alarms() == []
    for i in range(10):
        feed(engine, T0 + 31 + i * 0.0005, 200 + i)
    engine.advance(T0 + 100)
    assert rec.alarms() == [(T0 + 31, "underpass-flooded", "wl-01", "raised")]


def test_a_stale_input_holds_the_alarm_raises_a_stale_alarm_and_a_sensor_coming_back_raises_nothing_by_itself() -> None:
    rec = Recorder()
    engine = rec.engine(bound(FLOOD))
    for i in range(40):
        feed(engine, T0 + i, 200)  # wl-01 floods: raised at T0 + 30
        feed(engine, T0 + i, 20, device="wl-02")  # wl-02 stays dry
    # Both sensors fall silent for five minutes (stale after 10 s: three 1 s polls, at least 10 s).
    engine.advance(T0 + 340)
    assert rec.states("stale") == [("underpass-flooded", "wl-01", "raised"), ("underpass-flooded", "wl-02", "raised")]
    assert rec.states() == [("underpass-flooded", "wl-01", "raised")], "nothing cleared or raised while unknown"
    stale = [t for t in rec.out if getattr(t, "what", "") == "stale"]
    assert stale[0].ts == T0 + 39 + 10 and stale[0].inputs == ("depth",)
    assert "depth (wl-01/water_level): no reading for 10 s" in stale[0].message
    # They answer again, but without a value (bad quality): not stale any more, still unknown.
    for i in range(100):
        feed(engine, T0 + 341 + i, None, device="wl-02", good=False)
        feed(engine, T0 + 341 + i, None, good=False)
    assert rec.states("stale")[2:] == [
        ("underpass-flooded", "wl-02", "cleared"),
        ("underpass-flooded", "wl-01", "cleared"),
    ]
    assert rec.states() == [("underpass-flooded", "wl-01", "raised")], "nothing cleared or raised on bad values"
    # Values again: wl-02 now reads a flood, wl-01 a dry road. No raise at once.
    t = T0 + 450
    feed(engine, t, 200, device="wl-02")
    feed(engine, t, 20)
    assert rec.states() == [("underpass-flooded", "wl-01", "raised")]
    for i in range(1, 90):
        feed(engine, t + i, 200, device="wl-02")
        feed(engine, t + i, 20)
    assert rec.alarms()[1:] == [
        (t + 30, "underpass-flooded", "wl-02", "raised"),
        (t + 60, "underpass-flooded", "wl-01", "cleared"),
    ], "evaluation resumed: wl-02 raised after its own 30 s, wl-01 cleared after 60 s below 100"


def test_a_deadline_passed_while_unknown_is_decided_by_the_next_known_reading() -> None:
    rec = Recorder()
    engine = rec.engine(bound(FLOOD))
    feed(engine, T0, 200)
    for i in range(1, 40):
        feed(engine, T0 + i, None, good=False)  # the deadline (T0 + 30) passes while unknown
    assert rec.alarms() == [], "unknown raises nothing"
    feed(engine, T0 + 40, 200, device="wl-02")
    feed(engine, T0 + 40, 200)  # known and still true: raised now, the unknown stretch cancelled nothing
    assert rec.alarms() == [(T0 + 40, "underpass-flooded", "wl-01", "raised")]

    rec = Recorder()
    engine = rec.engine(bound(FLOOD))
    feed(engine, T0, 200)
    for i in range(1, 40):
        feed(engine, T0 + i, None, good=False)
    feed(engine, T0 + 40, 90)  # known and false: the pending raise is cancelled
    for i in range(41, 71):
        feed(engine, T0 + i, 200)
    assert rec.alarms() == [], "a fresh 30 s runs from T0 + 41"
    engine.advance(T0 + 71)
    assert rec.alarms() == [(T0 + 71, "underpass-flooded", "wl-01", "raised")]


SPEED_RULES = """
[[rules]]
name = "fog"
inputs = { vis = "vis-01/visibility_1min" }
when = "vis < 200"
priority = 10
actions = [ { on = "raise", write = "sign-01/speed_limit", value = 80 },
            { on = "clear", write = "sign-01/speed_limit", value = 0 } ]

[[rules]]
name = "flood"
inputs = { depth = "wl-01/water_level" }
when = "depth > 150"
priority = 20
actions = [ { on = "raise", write = "sign-01/speed_limit", value = 40 },
            { on = "clear", write = "sign-01/speed_limit", value = 0 } ]
"""


def _fire(order: list[str]) -> tuple[Recorder, object]:
    rec = Recorder()
    engine = rec.engine(bound(SPEED_RULES))
    for i, rule in enumerate(order):
        if rule == "fog":
            engine.on_reading("vis-01", "visibility_1min", 120.0, True, T0 + i)
        else:
            engine.on_reading("wl-01", "water_level", 200.0, True, T0 + i)
    return rec, engine


def test_the_higher_priority_wins_whatever_the_order_of_firing() -> None:
    rec, engine = _fire(["fog", "flood"])
    assert rec.intents() == [("fog", "sign-01/speed_limit", 80.0), ("flood", "sign-01/speed_limit", 40.0)]
    rec2, engine2 = _fire(["flood", "fog"])
    assert rec2.intents() == [("flood", "sign-01/speed_limit", 40.0)], "the lower priority never got the sign"
    for e in (engine, engine2):
        assert e.arbiter.desired[("sign-01", "speed_limit")].value == 40.0  # type: ignore[attr-defined]
    # The flood clears: the fog still claims the sign, so it goes back to 80, not to the clear value.
    engine2.on_reading("wl-01", "water_level", 20.0, True, T0 + 5)  # type: ignore[attr-defined]
    assert rec2.intents()[-1] == ("fog", "sign-01/speed_limit", 80.0)
    engine2.on_reading("vis-01", "visibility_1min", 5000.0, True, T0 + 6)  # type: ignore[attr-defined]
    assert rec2.intents()[-1] == ("fog", "sign-01/speed_limit", 0.0), "nobody claims it: the clear value"


def test_equal_priorities_go_to_the_most_recently_raised() -> None:
    rules = SPEED_RULES.replace("priority = 20", "priority = 10")
    rec = Recorder()
    engine = rec.engine(bound(rules))
    engine.on_reading("wl-01", "water_level", 200.0, True, T0)
    engine.on_reading("vis-01", "visibility_1min", 120.0, True, T0 + 1)
    assert rec.intents()[-1] == ("fog", "sign-01/speed_limit", 80.0)


def test_windows_and_the_local_time_of_day() -> None:
    rules = """
[[rules]]
name = "rising"
subjects = { devices = ["wl-01"] }
inputs = { depth = "water_level" }
when = "depth > 20 and rate(depth, 30) > 2"
clear_when = "rate(depth, 30) < 0.5"

[[rules]]
name = "night"
when = "time_of_day >= 23:00 or time_of_day < 05:00"
alarm = false
"""
    zone = ZoneInfo("Europe/Berlin")
    start = datetime.datetime(2026, 7, 1, 22, 58, 30, tzinfo=zone).timestamp()
    rec = Recorder()
    engine = rec.engine(bound(rules, time_zone="Europe/Berlin"), now=start)
    for i in range(40):
        feed(engine, start + i, 10 + 3 * i)  # rising 3 mm/s
    assert ("rising", "wl-01", "raised") in rec.states()
    engine.advance(start + 89)  # 23:00:00 local came at start + 90
    assert ("night", "gateway", "raised") not in rec.states()
    engine.advance(start + 91)
    night = [a for a in rec.alarms() if a[1] == "night"]
    assert night == [(start + 90, "night", "gateway", "raised")]


def test_a_restart_keeps_pending_deadlines_active_alarms_and_windows() -> None:
    rules = bound(FLOOD.replace("for_s = 30", "for_s = 60"))
    rec = Recorder()
    engine = rec.engine(rules)
    for i in range(61):
        feed(engine, T0 + i, 200, device="wl-02")  # wl-02 raised at T0 + 60
        if i >= 20:
            feed(engine, T0 + i, 200)  # wl-01 pending since T0 + 20: due at T0 + 80
    assert rec.states() == [("underpass-flooded", "wl-02", "raised")]
    saved = snapshot(engine)

    # The agent restarts 5 s later; the new engine knows nothing of the values yet.
    rec2 = Recorder()
    engine2 = rec2.engine(rules, now=T0 + 65)
    assert restore(engine2, saved, T0 + 65) == 1
    for i in range(66, 100):
        feed(engine2, T0 + i, 200)
        feed(engine2, T0 + i, 200, device="wl-02")
    assert rec2.alarms() == [(T0 + 80, "underpass-flooded", "wl-01", "raised")], "20 s after the kill, not 60"
    # The alarm that was active before is still active (not raised again): it clears as usual.
    for i in range(100, 170):
        feed(engine2, T0 + i, 20, device="wl-02")
    assert rec2.alarms()[-1] == (T0 + 160, "underpass-flooded", "wl-02", "cleared")


def test_a_changed_rule_restarts_alone_keeping_its_alarms_and_a_removed_rule_clears() -> None:
    two = FLOOD + FLOOD.replace('"underpass-flooded"', '"deep-water"').replace("depth > 150", "depth > 120")
    rec = Recorder()
    engine = rec.engine(bound(two))
    for i in range(41):
        feed(engine, T0 + i, 200, device="wl-02")  # both rules raise for wl-02 at T0 + 30
        if i >= 31:
            feed(engine, T0 + i, 200)  # both pending for wl-01, due at T0 + 61
    changed = two.replace("depth > 120", "depth > 130")
    restarted = engine.reconfigure(bound(changed), T0 + 41)
    assert restarted == ["deep-water"]
    for i in range(41, 80):
        feed(engine, T0 + i, 200)
        feed(engine, T0 + i, 200, device="wl-02")
    raised = [(t, rule, s) for t, rule, s, st in rec.alarms() if st == "raised"]
    assert (T0 + 61, "underpass-flooded", "wl-01") in raised, "the unchanged rule kept its deadline"
    assert (T0 + 71, "deep-water", "wl-01") in raised, "the changed rule started its 30 s afresh"
    assert sum(1 for _, r, s in raised if s == "wl-02") == 2, "no alarm raised twice by the change"
    engine.reconfigure(bound(FLOOD), T0 + 80)
    assert set(rec.states()[-2:]) == {("deep-water", "wl-02", "cleared"), ("deep-water", "wl-01", "cleared")}


def test_acknowledging_stops_reminders_and_failed_actions_raise_and_clear_one_alarm() -> None:
    rules = bound(FLOOD.replace('severity = "critical"', 'severity = "critical"\nrenotify_s = 60'))
    rec = Recorder()
    engine = rec.engine(rules)
    for i in range(31):
        feed(engine, T0 + i, 200)
    engine.advance(T0 + 155)
    assert [s for _, _, _, s in rec.alarms()] == ["raised", "reminder", "reminder"]
    assert engine.acknowledge("wl-01", "underpass-flooded", "tech", T0 + 156)
    assert not engine.acknowledge("wl-01", "underpass-flooded", "tech", T0 + 157), "already acknowledged"
    engine.advance(T0 + 600)
    assert [s for _, _, _, s in rec.alarms()] == ["raised", "reminder", "reminder", "acknowledged"]
    for error in ("writing 1 failed: exception 04", "wrote 1, read back 0", None, None):
        engine.action_result("sign-01", "closure", error, T0 + 601)
    failed = [(t.subject, t.kind, t.state, t.message) for t in rec.out if getattr(t, "what", "") == "action_failed"]
    assert failed == [
        ("sign-01", "action_failed:closure", "raised", "sign-01/closure: writing 1 failed: exception 04"),
        ("sign-01", "action_failed:closure", "cleared", "sign-01/closure confirmed"),
    ]


def test_window_contents_survive_a_restart_unless_the_rule_changed() -> None:
    rules = """
[[rules]]
name = "rising"
subjects = { devices = ["wl-01"] }
inputs = { depth = "water_level" }
when = "rate(depth, 60) > 1"
"""
    first = bound(rules)
    rec = Recorder()
    engine = rec.engine(first)
    for i in range(30):
        feed(engine, T0 + i, 100 + 0.5 * i)  # 0.5 mm/s: not yet
    saved = windows_snapshot(engine)
    assert rec.alarms() == []

    rec2 = Recorder()
    engine2 = rec2.engine(first, now=T0 + 40)
    restore_windows(engine2, saved, T0 + 40)
    feed(engine2, T0 + 41, 160)  # with the 30 readings kept: (160 - 100) / 41 s > 1 mm/s
    assert rec2.states() == [("rising", "wl-01", "raised")]

    rec3 = Recorder()
    engine3 = rec3.engine(bound(rules.replace("> 1", "> 1.0")), now=T0 + 40)
    restore_windows(engine3, saved, T0 + 40)
    feed(engine3, T0 + 41, 160)
    assert rec3.alarms() == [], "a changed rule starts with empty windows (one reading is no rate)"


def test_actions_send_events_and_raise_and_clear_another_alarm() -> None:
    rules = """
[[rules]]
name = "flooded"
subjects = { devices = ["wl-01"] }
inputs = { depth = "water_level" }
when = "depth > 150"
severity = "critical"
actions = [ { on = "raise", raise_alarm = "underpass-closed" }, { on = "raise", event = "closing" } ]

[[rules]]
name = "drained"
subjects = { devices = ["wl-01"] }
inputs = { depth = "water_level" }
when = "depth < 20"
alarm = false
actions = [ { on = "raise", clear_alarm = "underpass-closed" } ]
"""
    rec = Recorder()
    engine = rec.engine(bound(rules))
    feed(engine, T0, 200)
    feed(engine, T0 + 1, 100)
    feed(engine, T0 + 2, 10)
    raised_by = [(t.ts, t.subject, t.kind, t.state, t.severity) for t in rec.out if getattr(t, "what", "") == "alarm"]
    assert raised_by == [
        (T0, "wl-01", "underpass-closed", "raised", "critical"),
        (T0 + 2, "wl-01", "underpass-closed", "cleared", "critical"),
    ]
    events = [(e.ts, e.subject, e.name, e.state) for e in rec.out if type(e).__name__ == "Event"]
    assert events == [(T0, "wl-01", "closing", "raise")]
    assert engine.owns("wl-01", "flooded") and not engine.owns("wl-01", "nothing")
