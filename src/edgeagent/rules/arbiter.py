"""One arbiter per written point: which rule's value the point should hold now.

A rule whose alarm is active *claims* each point its ``on = "raise"`` actions write, with
its value and its priority. The highest priority wins; between equal priorities the most
recently raised wins, and between two raised at the same instant the rule name decides,
so the outcome never depends on the order in which the rules happened to fire. When no
rule claims a point, it gets the value of the most recent ``on = "clear"`` write to it
(the sign goes back to normal), and nothing enforces it after that.
"""

from __future__ import annotations

from collections.abc import Iterable

from edgeagent.rules.bind import BoundAction
from edgeagent.rules.model import Instance, Intent, RuleRuntime

Point = tuple[str, str]  # (device, point)


class Arbiter:
    def __init__(self) -> None:
        self.claimants: dict[Point, list[tuple[Instance, BoundAction]]] = {}
        self.released: dict[Point, tuple[float | str, float | None, float, str, str]] = {}
        self.desired: dict[Point, Intent] = {}

    def rebuild(self, runtimes: Iterable[RuleRuntime]) -> None:
        """Who may claim what, after the rules changed."""
        self.claimants = {}
        for rt in runtimes:
            for action in rt.bound.actions:
                if action.kind != "write":
                    continue
                for target in action.targets:
                    if action.on == "raise":
                        for inst in rt.instances:
                            self.claimants.setdefault(target, []).append((inst, action))
                    else:
                        self.claimants.setdefault(target, [])

    def points_of(self, rt: RuleRuntime) -> list[Point]:
        return [t for a in rt.bound.actions if a.kind == "write" for t in a.targets]

    def release(self, inst: Instance, action: BoundAction, ts: float) -> None:
        """A clear action: the value a point returns to once nobody claims it."""
        assert action.value is not None
        for target in action.targets:
            self.released[target] = (action.value, action.expected, ts, inst.rt.bound.name, inst.subject)

    def decide(self, point: Point, ts: float) -> Intent | None:
        """The value the point should hold now; returned only when it differs from before."""
        best: tuple[tuple[int, float, str, str], Instance, BoundAction] | None = None
        for inst, action in self.claimants.get(point, ()):
            if inst.alarm_state is None or not inst.alive:
                continue
            rank = (inst.rt.bound.priority, inst.raised_ts or 0.0, inst.rt.bound.name, inst.subject)
            if best is None or rank > best[0]:
                best = (rank, inst, action)
        old = self.desired.get(point)
        if best is not None:
            _, inst, action = best
            assert action.value is not None
            new = Intent(ts, inst.rt.bound.name, inst.subject, *point, action.value, action.expected, True)
        elif point in self.released:
            value, expected, _, rule, subject = self.released[point]
            new = Intent(ts, rule, subject, *point, value, expected, False)
        else:
            return None
        self.desired[point] = new
        if old is not None and old.expected == new.expected and old.value == new.value:
            return None  # the same value (perhaps for another rule now): nothing to write
        return new
