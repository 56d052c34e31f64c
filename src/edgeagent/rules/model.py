"""What the engine tells the world, and the per-subject state it keeps.

The engine is a clocked state machine with no I/O: readings and timer deadlines go in,
``Transition`` (an alarm changed), ``Intent`` (a point should now hold a value) and
``Event`` (something to send upstream) come out through callbacks, in order. The agent's
rules unit and ``edgeagent rules test`` drive the same engine, one with the wall clock,
the other with a trace's times.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from edgeagent.rules.window import SampleWindow

if TYPE_CHECKING:
    from edgeagent.rules.bind import BoundRule, Source

# What an alarm is about (Transition.what).
CONDITION = "condition"  # the rule's own alarm
STALE = "stale"  # an input of the rule has no reading
ACTION_FAILED = "action_failed"  # a write was refused or not read back
RAISED_BY_ACTION = "alarm"  # raised or cleared by another rule's action


@dataclass(frozen=True, slots=True)
class Transition:
    """An alarm changed: raised, acknowledged, cleared, or a reminder that it is still raised."""

    ts: float
    rule: str
    subject: str  # a device id, or "gateway" for a site-wide rule
    kind: str  # the alarm's name under its subject: the rule, "<rule>:stale", "action_failed:<point>"
    state: str  # "raised" | "acknowledged" | "cleared" | "reminder"
    severity: str
    message: str
    what: str = CONDITION
    alarm: bool = True  # False: a rule that only drives actions (nothing upstream)
    inputs: tuple[str, ...] = ()  # for a stale alarm: which inputs

    @property
    def id(self) -> str:
        return f"{self.subject}/{self.kind}"


@dataclass(frozen=True, slots=True)
class Intent:
    """A written point should now hold ``value``: what the arbiter decided, and for whom."""

    ts: float
    rule: str
    subject: str
    device: str
    point: str
    value: float | str
    expected: float | None  # what a read-back must show
    enforce: bool  # True while a rule claims the point: re-asserted after a reboot or a mismatch


@dataclass(frozen=True, slots=True)
class Event:
    ts: float
    rule: str
    subject: str
    name: str
    state: str  # "raise" | "clear"
    message: str


class RuleRuntime:
    """A bound rule with its counters and its subjects' instances."""

    __slots__ = ("bound", "evaluations", "fired", "instances", "last_eval_ts", "last_fired_ts", "static", "zone")

    def __init__(self, bound: BoundRule) -> None:
        self.bound = bound
        self.zone = ZoneInfo(bound.time_zone) if bound.time_zone else None
        self.evaluations = 0
        self.fired = 0
        self.last_eval_ts: float | None = None
        self.last_fired_ts: float | None = None
        windows = bound.windows()
        # Nothing but its inputs' values can change the outcome: an unchanged value needs no evaluation.
        self.static = not windows and not bound.uses_clock
        self.instances = [Instance(self, subject, sources, windows) for subject, sources in bound.subjects]


class Instance:
    """One (rule, subject): its inputs' values, windows, pending deadlines and alarm state."""

    __slots__ = (
        "acked_by",
        "acked_ts",
        "alarm_state",
        "alive",
        "last_ts",
        "next_renotify",
        "now",
        "pending_clear",
        "pending_raise",
        "raised_ts",
        "rt",
        "sources",
        "stale",
        "stale_active",
        "stale_due",
        "subject",
        "values",
        "windows",
    )

    def __init__(self, rt: RuleRuntime, subject: str, sources: tuple[Source, ...], windows: dict[int, float]) -> None:
        self.rt = rt
        self.subject = subject
        self.sources = sources
        n = len(sources)
        self.values: list[float | None] = [None] * n
        self.stale: list[bool] = [False] * n
        self.windows: list[SampleWindow | None] = [SampleWindow(windows[i]) if i in windows else None for i in range(n)]
        self.last_ts: list[float] = [0.0] * n
        self.stale_due: list[float | None] = [None] * n
        self.now = 0.0
        self.alive = True
        self.alarm_state: str | None = None  # "raised" | "acknowledged" while active
        self.raised_ts: float | None = None
        self.acked_by: str | None = None
        self.acked_ts: float | None = None
        self.pending_raise: float | None = None
        self.pending_clear: float | None = None
        self.next_renotify: float | None = None
        self.stale_active = False

    # The expression environment (see expr.Env) -----------------------------------------

    def clock(self) -> tuple[float, int]:
        local = datetime.fromtimestamp(self.now, self.rt.zone)
        return local.hour + local.minute / 60 + local.second / 3600, local.isoweekday()

    # Descriptions -----------------------------------------------------------------------

    def stale_inputs(self) -> tuple[str, ...]:
        return tuple(name for name, s in zip(self.rt.bound.inputs, self.stale, strict=True) if s)

    def stale_message(self, now: float) -> str:
        parts = []
        for name, src, s, last in zip(self.rt.bound.inputs, self.sources, self.stale, self.last_ts, strict=True):
            if s:
                parts.append(f"{name} ({src.device}/{src.point}): no reading for {now - last:.0f} s")
        return "; ".join(parts) or "every input has a reading again"

    def values_text(self) -> str:
        shown = []
        for name, value in zip(self.rt.bound.inputs, self.values, strict=True):
            shown.append(f"{name} {'unknown' if value is None else f'{value:g}'}")
        return ", ".join(shown)

    def as_dict(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "alarm": self.alarm_state or "clear",
            "pending_raise_at": self.pending_raise,
            "pending_clear_at": self.pending_clear,
            "stale_inputs": list(self.stale_inputs()),
            "values": dict(zip(self.rt.bound.inputs, self.values, strict=True)),
        }
