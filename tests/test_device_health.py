"""A device's health by the rules every runner shares: counted failures, one event per change, honest values.

``Health`` is fed what a runner sees (a poll's readings, a failure, silence) and keeps
the device's entry on the status page and its state events in step. Each test states one
rule as counts: the failure that turns a device offline is the ``offline_after``-th in a row.
"""

from __future__ import annotations

import time

from edgeagent.devices.health import Health
from edgeagent.live import DeviceLive, DeviceState
from edgeagent.model import Quality, Reading


class Device:
    """One device's live entry, its Health, and every state event with polls_failed at that moment."""

    def __init__(self, *, offline_after: int = 3, fault_points: frozenset[str] = frozenset()) -> None:
        self.live = DeviceLive("wl-01", "generic_water_level", "flood", {}, fault_points=fault_points)
        self.health = Health(self.live, offline_after=offline_after, on_state=self._on_state)
        self.events: list[tuple[str, str, int]] = []  # (new state, reason, polls_failed then)

    def _on_state(self, device: str, state: str, previous: str, reason: str) -> None:
        assert device == "wl-01" and previous != state
        self.events.append((state, reason, self.live.polls_failed))

    def poll(self, value: float = 41.5, **extra: float) -> None:
        now = time.time()
        readings = [Reading("wl-01", "water_level", now, value, "mm")]
        readings += [Reading("wl-01", name, now, v, "flag") for name, v in extra.items()]
        self.health.succeeded(readings)

    @property
    def state(self) -> str:
        return self.live.state.value


def test_offline_comes_with_exactly_the_offline_after_th_failure_in_a_row_degraded_before() -> None:
    d = Device(offline_after=3)
    d.poll()
    d.health.failed("no answer from unit 1 within 0.3 s")
    assert d.state == "degraded"
    d.health.failed("no answer from unit 1 within 0.3 s")
    assert d.state == "degraded"
    d.health.failed("no answer from unit 1 within 0.3 s")
    assert d.state == "offline"
    assert [(state, failed) for state, _, failed in d.events] == [("online", 0), ("degraded", 1), ("offline", 3)]


def test_after_a_recovery_it_again_takes_offline_after_failures_to_go_offline() -> None:
    d = Device(offline_after=2)
    d.poll()
    d.health.failed("timeout")
    d.health.failed("timeout")
    assert d.state == "offline"
    d.poll()
    assert d.state == "online"
    d.health.failed("timeout")
    assert d.state == "degraded", "one failure after a recovery is not two in a row"


def test_one_state_event_per_change_whatever_the_number_of_failed_polls() -> None:
    d = Device(offline_after=2)
    d.poll()
    for _ in range(7):
        d.health.failed("no answer")
    d.poll()
    d.poll()
    assert [state for state, _, _ in d.events] == ["online", "degraded", "offline", "online"]
    assert d.events[2][1] == "no answer" and d.events[3][1] == ""
    assert (d.live.polls_ok, d.live.polls_failed) == (3, 7)


def test_values_from_before_the_trouble_are_shown_uncertain_until_a_good_poll() -> None:
    d = Device()
    d.poll(41.5)
    assert d.live.points["water_level"].quality == Quality.GOOD
    d.health.failed("no answer")
    point = d.live.points["water_level"]
    assert (point.value, point.quality) == (41.5, Quality.UNCERTAIN), "the old value is no longer vouched for"
    d.poll(42.0)
    assert d.live.points["water_level"].quality == Quality.GOOD


def test_a_device_offline_at_once_stays_offline_through_the_failures_after() -> None:
    d = Device(offline_after=3)
    d.poll()
    d.health.went_offline("bus flood cannot be reached")
    assert d.state == "offline"
    d.health.failed("no answer")
    assert d.state == "offline", "a failure after going offline at once does not make it look better"
    assert [state for state, _, _ in d.events] == ["online", "offline"]


def test_a_set_fault_point_degrades_a_device_that_answers_and_one_at_zero_does_not() -> None:
    d = Device(fault_points=frozenset({"lamp_fault"}))
    d.poll(lamp_fault=0)
    assert (d.state, d.live.reason) == ("online", "")
    d.poll(lamp_fault=1)
    assert (d.state, d.live.reason) == ("degraded", "fault: lamp_fault")
    d.poll(lamp_fault=0)
    assert (d.state, d.live.reason) == ("online", "")


def test_reason_since_errors_and_last_good_poll_follow_each_change() -> None:
    d = Device(offline_after=2)
    before = time.time()
    d.poll()
    assert d.live.last_ok_ts is not None and d.live.last_ok_ts >= before
    d.health.failed("no answer from unit 1")
    d.health.failed("exception 02 from unit 1")
    assert [reason for _, reason in d.live.errors] == ["no answer from unit 1", "exception 02 from unit 1"]
    assert d.live.reason == "exception 02 from unit 1"
    d.live.state_since = 0.0  # so that the change below must move it
    back = time.time()
    d.poll()
    assert d.live.state == DeviceState.ONLINE and d.live.reason == ""
    assert d.live.state_since >= back, "the page says since when it is online again"
    assert d.live.last_ok_ts >= back
