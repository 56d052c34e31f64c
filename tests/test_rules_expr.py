"""Rule expressions: our own grammar compiled to closures; unknown spreads as in Kleene logic."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from edgeagent.rules.expr import ExprError, compile_expression
from edgeagent.rules.window import SampleWindow


@dataclass
class Env:
    values: list[float | None]
    stale: list[bool] = field(default_factory=list)
    windows: list[SampleWindow | None] = field(default_factory=list)
    now: float = 1000.0
    hour: float = 12.0

    def __post_init__(self) -> None:
        self.stale = self.stale or [False] * len(self.values)
        self.windows = self.windows or [None] * len(self.values)

    def clock(self) -> tuple[float, int]:
        return self.hour, 3


def run(text: str, **values: float | None) -> object:
    compiled = compile_expression(text, list(values))
    return compiled.fn(Env(list(values.values())))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("depth > 150", True),
        ("depth > 150 and speed > 10", False),
        ("depth - 2 * 10 == 140", True),
        ("(depth - 2) * 10 == 1580", True),
        ("-depth < 0", True),
        ("not depth > 150 or speed > 4", True),
        ("depth % 7 == 160 % 7", True),
        ("abs(speed - 20) == 15", True),
        ("depth >= 160 and depth <= 160", True),
        ("depth != 160", False),
        ("true and not false", True),
    ],
)
def test_operators_and_precedence(text: str, expected: bool) -> None:
    assert run(text, depth=160.0, speed=5.0) is expected


def test_unknown_spreads_except_where_the_known_side_decides() -> None:
    assert run("depth > 150", depth=None) is None
    assert run("depth > 150 and speed > 10", depth=None, speed=5.0) is False
    assert run("depth > 150 and speed > 10", depth=None, speed=50.0) is None
    assert run("depth > 150 or speed > 10", depth=None, speed=50.0) is True
    assert run("depth > 150 or speed > 10", depth=None, speed=5.0) is None
    assert run("not depth > 150", depth=None) is None
    assert run("depth / speed > 1", depth=5.0, speed=0.0) is None, "a division by zero is unknown, not an error"


def test_windows_read_the_recent_good_readings() -> None:
    window = SampleWindow(60)
    for t, v in [(900, 1.0), (950, 2.0), (980, 4.0), (1000, 6.0)]:
        window.add(t, v)
    compiled = compile_expression("avg(x, 60) == 4 and max(x, 60) == 6 and count(x, 30) == 2", ["x"])
    assert compiled.windows == {0: 60.0}
    env = Env([6.0], windows=[window])
    assert compiled.fn(env) is True
    assert compile_expression("rate(x, 60) == 0.08", ["x"]).fn(env) is True
    assert compile_expression("min(x, 60) == 2", ["x"]).fn(env) is True, "900 is outside the last 60 s"
    env.stale = [True]
    assert compile_expression("count(x, 60) > 0", ["x"]).fn(env) is None, "a stale input's window is unknown too"


def test_time_of_day_literals_and_the_clock() -> None:
    night = compile_expression("time_of_day >= 23:00 or time_of_day < 05:30", [])
    assert night.uses_clock
    assert night.fn(Env([], hour=2.0)) is True
    assert night.fn(Env([], hour=5.5)) is False
    assert night.fn(Env([], hour=23.25)) is True
    assert compile_expression("weekday == 3", []).fn(Env([])) is True


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ("depth > ", (1, 9), "expected a number, an input or '('"),
        ("deph > 150", (1, 1), "unknown input 'deph'; did you mean 'depth'?"),
        ("depth > 150 and\n  speedd < 3", (2, 3), "unknown input 'speedd'"),
        ("depth + 1", (1, 1), "must be a condition"),
        ("depth and speed > 1", (1, 7), "'and' needs a condition (true or false), got a number"),
        ("depth > 1 + (speed > 2)", (1, 11), "'+' needs a number, got a condition"),
        ("1 < depth < 3", (1, 11), "comparisons do not chain"),
        ("depth = 150", (1, 7), "use == to compare"),
        ("avg(depth) > 1", (1, 10), "expected ','"),
        ("avg(depth, 0) > 1", (1, 12), "a window is more than 0"),
        ("depth(1) > 2", (1, 6), "'depth' is an input, not a function"),
        ("__import__ > 1", (1, 1), "unknown input '__import__'"),
        ("__import__('os') > 1", (1, 12), "unexpected character"),
        ("depth.__class__ > 1", (1, 6), "unexpected character '.'"),
        ("25:00 < 3", (1, 1), "not a time of day"),
        ("(depth > 1", (1, 11), "expected ')'"),
        ("", (1, 1), "empty expression"),
    ],
)
def test_errors_say_what_and_where(text: str, where: tuple[int, int], says: str) -> None:
    with pytest.raises(ExprError) as info:
        compile_expression(text, ["depth", "speed"])
    assert (info.value.line, info.value.column) == where, str(info.value)
    assert says in info.value.message


def test_only_declared_inputs_and_builtins_are_names() -> None:
    for text in ("eval > 1", "os > 1", "self > 1", "print > 1"):
        with pytest.raises(ExprError, match="unknown input"):
            compile_expression(text, ["depth"])


def test_a_window_holds_only_its_seconds_and_agrees_with_a_plain_computation() -> None:
    window = SampleWindow(60)
    samples = [(1000 + i / 10, float((i * 37) % 101)) for i in range(10_000)]  # 10 readings a second
    for t, v in samples:
        window.add(t, v)
    now = samples[-1][0]
    recent = [v for t, v in samples if t > now - 30]
    assert window.avg(now, 30) == sum(recent) / len(recent)
    assert (window.min(now, 30), window.max(now, 30), window.count(now, 30)) == (min(recent), max(recent), 300.0)
    assert len(window) == 600, "only the last 60 s are kept"
    assert len(window._ts) < 2 * 600 + 256, "and the dead front is cut off"
