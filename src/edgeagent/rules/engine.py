"""The rules engine: readings and deadlines in, alarm transitions and intents out.

Each (rule, subject) is an ``Instance`` with a small state machine:

- clear, nothing pending: a *known* ``when`` = true starts a pending raise due ``for_s``
  later (an absolute time, so it survives a restart);
- pending raise: a known false cancels it; at its deadline the condition is evaluated
  again and, if still true, the alarm is raised; if it is unknown then, the raise waits
  for the next known evaluation (true: raise, false: cancel);
- raised (or acknowledged): the same with ``clear_when`` (default: not ``when``) and
  ``clear_for_s``.

Unknown (a stale input, a reading of bad quality) neither starts nor cancels anything,
so start-up and a sensor coming back can never produce a raise by themselves: a raise
always needs the condition seen true, and held, by known evaluations. A rule is
evaluated only when one of its inputs brings a reading or one of its timers fires; each
reading is looked up in one dict. All deadlines share one heap with lazy invalidation.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence

from edgeagent.rules.alarms import SOON, URGENT, WINDOWS, AlarmSide, ExtraAlarm
from edgeagent.rules.arbiter import Arbiter, Point
from edgeagent.rules.bind import BoundRule
from edgeagent.rules.model import STALE, Event, Instance, Intent, RuleRuntime, Transition

RAISE, CLEAR, STALE_CHECK, RENOTIFY, CLOCK = range(5)
CLOCK_TICK_S = 60.0
__all__ = ["CLEAR", "RAISE", "RENOTIFY", "SOON", "URGENT", "WINDOWS", "Engine", "ExtraAlarm"]


class Engine(AlarmSide):
    def __init__(
        self,
        rules: Sequence[BoundRule],
        *,
        now: float,
        on_transition: Callable[[Transition], None] | None = None,
        on_intent: Callable[[Intent], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self._now = now
        self._heap: list[tuple[float, int, int, Instance | RuleRuntime, int]] = []
        self._seq = itertools.count()
        self.on_transition = on_transition or (lambda t: None)
        self.on_intent = on_intent or (lambda i: None)
        self.on_event = on_event or (lambda e: None)
        self.runtimes: dict[str, RuleRuntime] = {}
        self._index: dict[Point, list[tuple[Instance, int]]] = {}
        self.extra: dict[tuple[str, str], ExtraAlarm] = {}
        self.arbiter = Arbiter()
        self.dirty = 0
        self.reconfigure(rules, now)

    @property
    def now(self) -> float:
        return self._now

    # -- rules in and out ------------------------------------------------------------------

    def reconfigure(self, rules: Sequence[BoundRule], now: float) -> list[str]:
        """Take a new rule set; unchanged rules keep every bit of state. Returns the rules restarted.

        A changed rule starts afresh (no pending deadlines, empty windows) but keeps its
        subjects' active alarms, so an edit never silently drops or repeats an alarm; a
        removed rule (or subject) clears its alarms.
        """
        self._now = max(self._now, now)
        old = self.runtimes
        self.runtimes = {}
        restarted = []
        for bound in rules:
            rt = old.pop(bound.name, None)
            if rt is not None and rt.bound.key == bound.key:
                self.runtimes[bound.name] = rt
                continue
            new = RuleRuntime(bound)
            self.runtimes[bound.name] = new
            restarted.append(bound.name)
            self._start(new)
            if rt is not None:
                self._carry(rt, new)
        for rt in old.values():
            self._retire(rt.instances, "its rule was removed")
        self._index = {}
        for rt in self.runtimes.values():
            for inst in rt.instances:
                for slot, src in enumerate(inst.sources):
                    self._index.setdefault((src.device, src.point), []).append((inst, slot))
        self.arbiter.rebuild(self.runtimes.values())
        for point in list(self.arbiter.claimants):
            self._decide(point, self._now)
        self.dirty |= URGENT
        return restarted

    def _start(self, rt: RuleRuntime) -> None:
        for inst in rt.instances:
            for slot, src in enumerate(inst.sources):
                inst.last_ts[slot] = self._now
                self._push_stale(inst, slot, self._now + src.stale_s)
        if rt.bound.uses_clock:
            self._push(math.floor(self._now / CLOCK_TICK_S) * CLOCK_TICK_S + CLOCK_TICK_S, CLOCK, rt)

    def _carry(self, old: RuleRuntime, new: RuleRuntime) -> None:
        by_subject = {i.subject: i for i in new.instances}
        for prev in old.instances:
            prev.alive = False
            inst = by_subject.get(prev.subject)
            if inst is None:
                self._retire([prev], "it is no longer a subject of the rule")
                continue
            inst.alarm_state, inst.raised_ts = prev.alarm_state, prev.raised_ts
            inst.acked_by, inst.acked_ts = prev.acked_by, prev.acked_ts
            if prev.stale_active:
                self._emit(prev, "cleared", "the rule was changed", what=STALE)
            if inst.alarm_state == "raised":
                self._schedule_renotify(inst, self._now)

    def _retire(self, instances: Sequence[Instance], why: str) -> None:
        for inst in instances:
            inst.alive = False
            if inst.alarm_state is not None:
                inst.alarm_state = None
                self._emit(inst, "cleared", f"cleared because {why}")
            if inst.stale_active:
                inst.stale_active = False
                self._emit(inst, "cleared", f"cleared because {why}", what=STALE)

    # -- time ------------------------------------------------------------------------------

    def _push(self, deadline: float, kind: int, target: Instance | RuleRuntime, slot: int = 0) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), kind, target, slot))

    def _push_stale(self, inst: Instance, slot: int, deadline: float) -> None:
        inst.stale_due[slot] = deadline
        self._push(deadline, STALE_CHECK, inst, slot)

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def advance(self, now: float) -> None:
        """Fire every timer due by ``now``, each at its own deadline, in order."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, kind, target, slot = heapq.heappop(heap)
            self._now = max(self._now, deadline)
            if kind == CLOCK:
                assert isinstance(target, RuleRuntime)
                if self.runtimes.get(target.bound.name) is target:
                    for inst in target.instances:
                        self._evaluate(inst, deadline)
                    self._push(deadline + CLOCK_TICK_S, CLOCK, target)
                continue
            assert isinstance(target, Instance)
            if target.alive:
                self._timer(kind, target, slot, deadline)
        self._now = max(self._now, now)

    def _timer(self, kind: int, inst: Instance, slot: int, deadline: float) -> None:
        if kind == STALE_CHECK:
            if inst.stale_due[slot] != deadline:
                return
            inst.stale_due[slot] = None
            due = inst.last_ts[slot] + inst.sources[slot].stale_s
            if due > deadline:
                self._push_stale(inst, slot, due)
            elif not inst.stale[slot]:
                inst.stale[slot] = True
                inst.values[slot] = None
                self._update_stale(inst, deadline)
        elif kind == RAISE:
            if inst.pending_raise == deadline and inst.alarm_state is None:
                self._evaluate(inst, deadline)
        elif kind == CLEAR:
            if inst.pending_clear == deadline and inst.alarm_state is not None:
                self._evaluate(inst, deadline)
        elif kind == RENOTIFY and inst.next_renotify == deadline and inst.alarm_state == "raised":
            self._emit(inst, "reminder", f"still raised: {inst.values_text()}")
            self._schedule_renotify(inst, deadline)

    def _schedule_renotify(self, inst: Instance, since: float) -> None:
        every = inst.rt.bound.renotify_s
        if every and inst.rt.bound.alarm:
            inst.next_renotify = since + every
            self._push(inst.next_renotify, RENOTIFY, inst)
        else:
            inst.next_renotify = None

    # -- readings ----------------------------------------------------------------------------

    def on_reading(self, device: str, point: str, value: object, good: bool, ts: float) -> None:
        """A reading of ``device/point``; ``good`` is False for a reading of bad quality."""
        targets = self._index.get((device, point))
        if targets is None:
            return
        now = ts if ts > self._now else self._now
        if self._heap and self._heap[0][0] <= now:
            self.advance(now)
        self._now = now
        if good and isinstance(value, float | int) and not isinstance(value, bool) and math.isfinite(value):
            number: float | None = float(value)
        else:
            number = None
        for inst, slot in targets:
            was_stale = inst.stale[slot]
            old = inst.values[slot]
            inst.values[slot] = number
            inst.last_ts[slot] = now
            if inst.stale_due[slot] is None:
                self._push_stale(inst, slot, now + inst.sources[slot].stale_s)
            window = inst.windows[slot]
            if window is not None and number is not None:
                window.add(now, number)
                self.dirty |= WINDOWS
            if was_stale:
                inst.stale[slot] = False
                self._update_stale(inst, now)
            elif number == old and inst.rt.static:
                continue  # nothing the rule reads has changed
            self._evaluate(inst, now)

    def _update_stale(self, inst: Instance, now: float) -> None:
        stale = any(inst.stale)
        if stale and not inst.stale_active:
            inst.stale_active = True
            self._emit(inst, "raised", inst.stale_message(now), what=STALE)
        elif not stale and inst.stale_active:
            inst.stale_active = False
            self._emit(inst, "cleared", "every input has a reading again", what=STALE)

    # -- the state machine -------------------------------------------------------------------

    def _evaluate(self, inst: Instance, now: float) -> None:
        rt = inst.rt
        rt.evaluations += 1
        rt.last_eval_ts = now
        inst.now = now
        bound = rt.bound
        if inst.alarm_state is None:
            holds = bound.when.fn(inst)
            if holds is None:
                return
            if not holds:
                if inst.pending_raise is not None:
                    inst.pending_raise = None
                    self.dirty |= SOON
                return
            if inst.pending_raise is None:
                inst.pending_raise = now + bound.for_s
                self.dirty |= SOON
                if bound.for_s > 0:
                    self._push(inst.pending_raise, RAISE, inst)
                    return
            if now >= inst.pending_raise:
                self._raise(inst, now)
            return
        if bound.clear_when is not None:
            clears = bound.clear_when.fn(inst)
        else:
            holds = bound.when.fn(inst)
            clears = None if holds is None else not holds
        if clears is None:
            return
        if not clears:
            if inst.pending_clear is not None:
                inst.pending_clear = None
                self.dirty |= SOON
            return
        if inst.pending_clear is None:
            inst.pending_clear = now + bound.clear_for_s
            self.dirty |= SOON
            if bound.clear_for_s > 0:
                self._push(inst.pending_clear, CLEAR, inst)
                return
        if now >= inst.pending_clear:
            self._clear(inst, now)

    def _raise(self, inst: Instance, now: float) -> None:
        rt = inst.rt
        inst.alarm_state, inst.raised_ts = "raised", now
        inst.acked_by = inst.acked_ts = None
        inst.pending_raise = inst.pending_clear = None
        rt.fired += 1
        rt.last_fired_ts = now
        held = f" for {bound.for_s:g} s" if (bound := rt.bound).for_s else ""
        self._emit(inst, "raised", f"{bound.when_text}{held} ({inst.values_text()})")
        self._schedule_renotify(inst, now)
        self._act(inst, "raise", now)
        self.dirty |= URGENT

    def _clear(self, inst: Instance, now: float) -> None:
        inst.alarm_state = None
        inst.pending_raise = inst.pending_clear = inst.next_renotify = None
        bound = inst.rt.bound
        text = bound.clear_when_text or f"not ({bound.when_text})"
        held = f" for {bound.clear_for_s:g} s" if bound.clear_for_s else ""
        self._emit(inst, "cleared", f"{text}{held} ({inst.values_text()})")
        self._act(inst, "clear", now)
        self.dirty |= URGENT

    def _act(self, inst: Instance, on: str, now: float) -> None:
        points: list[Point] = []
        for action in inst.rt.bound.actions:
            if action.kind == "write":
                if on == "clear" and action.on == "clear":
                    self.arbiter.release(inst, action, now)
                points += [t for t in action.targets if t not in points]
            elif action.on == on:
                self._side_action(inst, action, now)
        for point in points:
            self._decide(point, now)

    def _decide(self, point: Point, now: float) -> None:
        intent = self.arbiter.decide(point, now)
        if intent is not None:
            self.dirty |= URGENT
            self.on_intent(intent)
