"""The engine's alarm side: what it tells the world, acknowledgements, failed and raised-by-action alarms.

``Engine`` inherits this; it keeps the state machine in ``engine.py`` apart from how its
alarms are named, emitted and acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeagent.rules.bind import BoundAction
from edgeagent.rules.model import ACTION_FAILED, CONDITION, RAISED_BY_ACTION, STALE, Event, Instance, Transition

if TYPE_CHECKING:
    from edgeagent.rules.arbiter import Arbiter
    from edgeagent.rules.model import RuleRuntime

ACTION_FAILED_SEVERITY = "major"
STALE_SEVERITY = "warning"
URGENT, SOON, WINDOWS = 1, 2, 4  # persistence hints (Engine.dirty): now, within SOON_S, sometime


@dataclass(slots=True)
class ExtraAlarm:
    """An alarm that is no rule's own condition: a failed action, or one raised by an action."""

    rule: str
    severity: str
    what: str
    message: str
    raised_ts: float
    state: str = "raised"  # "raised" | "acknowledged"
    acked_by: str | None = None


class AlarmSide:
    """Alarm naming, emission and acknowledgement, for ``Engine``."""

    _now: float
    dirty: int
    runtimes: dict[str, RuleRuntime]
    extra: dict[tuple[str, str], ExtraAlarm]
    arbiter: Arbiter
    on_transition: Callable[[Transition], None]
    on_event: Callable[[Event], None]

    def _side_action(self, inst: Instance, action: BoundAction, now: float) -> None:
        rule, subject = inst.rt.bound.name, inst.subject
        if action.kind == "event":
            self.on_event(Event(now, rule, subject, action.name, action.on, f"rule {rule}: {inst.values_text()}"))
            return
        key = (subject, action.name)
        current = self.extra.get(key)
        if action.kind == "raise_alarm" and current is None:
            message = f"raised by rule {rule}: {inst.values_text()}"
            self.extra[key] = ExtraAlarm(rule, inst.rt.bound.severity, RAISED_BY_ACTION, message, now)
            self._emit_extra(key, "raised", now)
        elif action.kind == "clear_alarm" and current is not None:
            self._emit_extra(key, "cleared", now, f"cleared by rule {rule}")
            del self.extra[key]

    # -- alarms told to the world --------------------------------------------------------------

    def _emit(self, inst: Instance, state: str, message: str, *, what: str = CONDITION) -> None:
        bound = inst.rt.bound
        if what == STALE:
            kind, severity, inputs, alarm = f"{bound.name}:stale", STALE_SEVERITY, inst.stale_inputs(), True
        else:
            kind, severity, inputs, alarm = bound.name, bound.severity, (), bound.alarm
        self.on_transition(
            Transition(self._now, bound.name, inst.subject, kind, state, severity, message, what, alarm, inputs)
        )

    def _emit_extra(self, key: tuple[str, str], state: str, now: float, message: str | None = None) -> None:
        a = self.extra[key]
        self.dirty |= URGENT
        self.on_transition(Transition(now, a.rule, key[0], key[1], state, a.severity, message or a.message, a.what))

    def action_result(self, device: str, point: str, error: str | None, now: float) -> None:
        """A write was confirmed (``error`` None) or failed: an ``action_failed`` alarm follows."""
        self._now = now = max(self._now, now)
        key = (device, f"{ACTION_FAILED}:{point}")
        current = self.extra.get(key)
        if error is None and current is not None:
            self._emit_extra(key, "cleared", now, f"{device}/{point} confirmed")
            del self.extra[key]
        elif error is not None and current is None:
            intent = self.arbiter.desired.get((device, point))
            rule = intent.rule if intent is not None else ACTION_FAILED
            message = f"{device}/{point}: {error}"
            self.extra[key] = ExtraAlarm(rule, ACTION_FAILED_SEVERITY, ACTION_FAILED, message, now)
            self._emit_extra(key, "raised", now)

    def acknowledge(self, source: str, kind: str, user: str, now: float) -> bool:
        """Someone has seen a raised alarm this engine owns: reminders stop. False if none."""
        self._now = now = max(self._now, now)
        rt = self.runtimes.get(kind)
        if rt is not None:
            for inst in rt.instances:
                if inst.subject == source and inst.alarm_state == "raised":
                    inst.alarm_state, inst.acked_by, inst.acked_ts = "acknowledged", user, now
                    inst.next_renotify = None
                    inst.now = now
                    self._emit(inst, "acknowledged", f"acknowledged by {user}")
                    self.dirty |= URGENT
                    return True
            return False
        extra = self.extra.get((source, kind))
        if extra is not None and extra.state == "raised":
            extra.state, extra.acked_by = "acknowledged", user
            self._emit_extra((source, kind), "acknowledged", now, f"acknowledged by {user}")
            return True
        return False

    def owns(self, source: str, kind: str) -> bool:
        base = kind.removesuffix(":stale")
        return base in self.runtimes or (source, kind) in self.extra

    # -- status ------------------------------------------------------------------------------------

    def rule_status(self) -> list[dict[str, object]]:
        out = []
        for rt in self.runtimes.values():
            b = rt.bound
            out.append(
                {
                    "name": b.name,
                    "severity": b.severity,
                    "alarm": b.alarm,
                    "evaluations": rt.evaluations,
                    "last_evaluation_ts": rt.last_eval_ts,
                    "fired": rt.fired,
                    "last_fired_ts": rt.last_fired_ts,
                    "active": sum(1 for i in rt.instances if i.alarm_state is not None),
                    "subjects": [i.as_dict() for i in rt.instances],
                }
            )
        return out
