"""Rule expressions: a small grammar of our own, parsed once and compiled to closures.

No ``eval``, no attribute access, no names but the rule's declared inputs and a few
built-ins: whatever a config says, an expression can only read numbers the rule was
given and compute a number or a truth value from them. The grammar, loosest first::

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
    sum     := product (("+" | "-") product)*
    product := unary (("*" | "/" | "%") unary)*
    unary   := "-" unary | atom
    atom    := NUMBER | HH:MM | "true" | "false" | input | clock
             | window "(" input "," NUMBER ")" | "abs" "(" expr ")" | "(" expr ")"
    window  := "avg" | "min" | "max" | "rate" | "count"
    clock   := "time_of_day" | "weekday"

Values are numbers, truth values, or *unknown* (``None``): an input that is stale or
whose last reading had bad quality is unknown, and unknown spreads as in Kleene's
three-valued logic (``false and unknown`` is false, ``true or unknown`` is true,
``unknown > 3`` is unknown). Types are checked at compile time, and every error says
where: ``1:9: unknown input 'deph'; did you mean 'depth'?``.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Value = float | bool | None
Fn = Callable[["Env"], Any]

WINDOW_FUNCTIONS = ("avg", "min", "max", "rate", "count")
CLOCK_NAMES = ("time_of_day", "weekday")
KEYWORDS = ("and", "or", "not", "true", "false")
RESERVED = frozenset((*KEYWORDS, *WINDOW_FUNCTIONS, *CLOCK_NAMES, "abs"))
MAX_WINDOW_S = 7 * 86400.0
MAX_LENGTH = 2000


class Window(Protocol):
    def avg(self, now: float, seconds: float) -> float | None: ...
    def min(self, now: float, seconds: float) -> float | None: ...
    def max(self, now: float, seconds: float) -> float | None: ...
    def rate(self, now: float, seconds: float) -> float | None: ...
    def count(self, now: float, seconds: float) -> float | None: ...


class Env(Protocol):
    """What a compiled expression reads: one subject's inputs, their windows, the time."""

    values: list[float | None]  # None: unknown (stale, bad quality, never read)
    stale: list[bool]
    windows: list[Window | None]
    now: float

    def clock(self) -> tuple[float, int]:
        """(local time of day in hours, ISO weekday 1-7) at ``now`` in the gateway's zone."""
        ...


class ExprError(ValueError):
    """An expression that cannot be compiled; ``line`` and ``column`` count from 1."""

    def __init__(self, message: str, line: int, column: int) -> None:
        self.line, self.column, self.message = line, column, message
        super().__init__(f"{line}:{column}: {message}")


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "num", "time", "name", "op", "end"
    text: str
    pos: int


_TOKEN = re.compile(
    r"(?P<ws>\s+)|(?P<time>\d{1,2}:\d{2}(?![\d:]))|(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op><=|>=|==|!=|[<>+\-*/%(),])"
)


def _position(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            line, col = _position(text, pos)
            char = text[pos]
            hint = " (use == to compare, 'and'/'or' to combine)" if char in "=&|!" else ""
            raise ExprError(f"unexpected character {char!r}{hint}", line, col)
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


@dataclass(slots=True)
class Compiled:
    """A compiled expression and what it depends on."""

    fn: Fn
    type: str  # "bool" | "num"
    inputs: set[int] = field(default_factory=set)  # input slots read
    windows: dict[int, float] = field(default_factory=dict)  # slot -> longest window (s)
    uses_clock: bool = False
    slot: int | None = None  # set when the expression is a bare input
    const: float | bool | None = None  # set when it is a literal


# Binding powers of infix operators (higher binds tighter).
_INFIX = {"or": 1, "and": 2, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4, "!=": 4, "+": 5, "-": 5, "*": 6, "/": 6, "%": 6}
_COMPARE = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


class _Parser:
    def __init__(self, text: str, inputs: Sequence[str]) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.slots = {name: i for i, name in enumerate(inputs)}

    # -- helpers ------------------------------------------------------------------------

    def error(self, message: str, token: Token | None = None) -> ExprError:
        line, col = _position(self.text, (token or self.peek()).pos)
        return ExprError(message, line, col)

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, text: str, after: str) -> Token:
        tok = self.peek()
        if tok.text != text or tok.kind not in ("op",):
            raise self.error(f"expected {text!r} {after}, got {_shown(tok)}")
        return self.take()

    def need(self, c: Compiled, want: str, tok: Token, what: str) -> None:
        if c.type != want:
            got = "a number" if c.type == "num" else "a condition"
            need = "a number" if want == "num" else "a condition (true or false)"
            raise self.error(f"{what} needs {need}, got {got}", tok)

    # -- grammar ------------------------------------------------------------------------

    def parse(self) -> Compiled:
        if not self.text.strip():
            raise ExprError("empty expression", 1, 1)
        c = self.expr(0)
        tok = self.peek()
        if tok.kind != "end":
            raise self.error(f"unexpected {_shown(tok)}")
        return c

    def expr(self, min_bp: int) -> Compiled:
        left = self.prefix()
        while True:
            tok = self.peek()
            key = tok.text if tok.kind in ("op", "name") else None
            bp = _INFIX.get(key or "")
            if bp is None or bp <= min_bp:
                return left
            self.take()
            right = self.expr(bp)
            left = self.infix(tok, left, right)
            if bp == 4 and self.peek().text in _COMPARE:
                raise self.error("comparisons do not chain: write a < b and b < c")

    def prefix(self) -> Compiled:
        tok = self.take()
        if tok.kind == "num":
            return _const(float(tok.text), "num")
        if tok.kind == "time":
            hours, minutes = (int(x) for x in tok.text.split(":"))
            if hours > 24 or minutes > 59 or (hours == 24 and minutes):
                raise self.error(f"{tok.text} is not a time of day (00:00 to 24:00)", tok)
            return _const(hours + minutes / 60, "num")
        if tok.kind == "op" and tok.text == "(":
            inner = self.expr(0)
            self.expect(")", "to close the '('")
            return inner
        if tok.kind == "op" and tok.text == "-":
            operand = self.expr(6)
            self.need(operand, "num", tok, "'-'")
            return _map(operand, operator.neg, "num")
        if tok.kind == "name":
            return self.name(tok)
        raise self.error(f"expected a number, an input or '(', got {_shown(tok)}", tok)

    def name(self, tok: Token) -> Compiled:
        word = tok.text
        if word == "not":
            operand = self.expr(3)
            self.need(operand, "bool", tok, "'not'")
            return _map(operand, operator.not_, "bool")
        if word in ("true", "false"):
            return _const(word == "true", "bool")
        if word in CLOCK_NAMES:
            index = CLOCK_NAMES.index(word)
            return Compiled(lambda env: env.clock()[index], "num", uses_clock=True)
        if word in WINDOW_FUNCTIONS:
            return self.window(tok)
        if word == "abs":
            self.expect("(", "after 'abs'")
            arg = self.expr(0)
            self.need(arg, "num", tok, "abs()")
            self.expect(")", "to close abs(")
            return _map(arg, abs, "num")
        if word in ("and", "or"):
            raise self.error(f"'{word}' needs a condition before it", tok)
        slot = self.slot(tok)
        if self.peek().text == "(":
            raise self.error(f"{word!r} is an input, not a function", self.peek())

        def value(env: Env) -> float | None:
            return env.values[slot]

        return Compiled(value, "num", inputs={slot}, slot=slot)

    def slot(self, tok: Token) -> int:
        if tok.kind != "name":
            raise self.error(f"expected an input name, got {_shown(tok)}", tok)
        slot = self.slots.get(tok.text)
        if slot is None:
            names = list(self.slots)
            close = difflib.get_close_matches(tok.text, names, n=1)
            if close:
                hint = f"; did you mean {close[0]!r}?"
            else:
                hint = f" (the inputs are {', '.join(names)})" if names else " (this rule has no inputs)"
            raise self.error(f"unknown input {tok.text!r}{hint}", tok)
        return slot

    def window(self, tok: Token) -> Compiled:
        fname = tok.text
        self.expect("(", f"after '{fname}' (e.g. {fname}(depth, 60): over the last 60 s)")
        slot = self.slot(self.take())
        self.expect(",", f"after the input in {fname}(input, seconds)")
        num = self.take()
        if num.kind != "num":
            raise self.error(f"{fname}() takes a number of seconds, got {_shown(num)}", num)
        seconds = float(num.text)
        if not 0 < seconds <= MAX_WINDOW_S:
            raise self.error(f"a window is more than 0 and at most {MAX_WINDOW_S:g} s, not {num.text}", num)
        self.expect(")", f"to close {fname}(")

        def windowed(env: Env) -> float | None:
            if env.stale[slot]:
                return None
            w = env.windows[slot]
            return None if w is None else getattr(w, fname)(env.now, seconds)

        return Compiled(windowed, "num", inputs={slot}, windows={slot: seconds})

    def infix(self, tok: Token, left: Compiled, right: Compiled) -> Compiled:
        op = tok.text
        if op in ("and", "or"):
            self.need(left, "bool", tok, f"'{op}'")
            self.need(right, "bool", tok, f"'{op}'")
            return _merge(left, right, _and(left.fn, right.fn) if op == "and" else _or(left.fn, right.fn), "bool")
        if op in _COMPARE:
            if left.type != right.type or (left.type == "bool" and op not in ("==", "!=")):
                self.need(left, "num", tok, f"'{op}'")
                self.need(right, "num", tok, f"'{op}'")
            if left.slot is not None and right.const is not None and op in _INPUT_VS_CONST:
                return Compiled(_INPUT_VS_CONST[op](left.slot, right.const), "bool", {left.slot}, slot=None)
            return _merge(left, right, _binary(left.fn, right.fn, _COMPARE[op]), "bool")
        self.need(left, "num", tok, f"'{op}'")
        self.need(right, "num", tok, f"'{op}'")
        fns = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": _div, "%": _mod}
        return _merge(left, right, _binary(left.fn, right.fn, fns[op]), "num")


def _shown(tok: Token) -> str:
    return "the end of the expression" if tok.kind == "end" else repr(tok.text)


def _const(value: float | bool, type_: str) -> Compiled:
    return Compiled(lambda env: value, type_, const=value)


# ``input OP constant``, the commonest condition, as one closure instead of three.
def _gt(slot: int, c: float) -> Fn:
    return lambda env: None if (x := env.values[slot]) is None else x > c


def _ge(slot: int, c: float) -> Fn:
    return lambda env: None if (x := env.values[slot]) is None else x >= c


def _lt(slot: int, c: float) -> Fn:
    return lambda env: None if (x := env.values[slot]) is None else x < c


def _le(slot: int, c: float) -> Fn:
    return lambda env: None if (x := env.values[slot]) is None else x <= c


_INPUT_VS_CONST: dict[str, Callable[[int, Any], Fn]] = {">": _gt, ">=": _ge, "<": _lt, "<=": _le}


def _map(c: Compiled, fn: Callable[[Any], Any], type_: str) -> Compiled:
    inner = c.fn

    def mapped(env: Env) -> Any:
        x = inner(env)
        return None if x is None else fn(x)

    return Compiled(mapped, type_, c.inputs, c.windows, c.uses_clock)


def _merge(a: Compiled, b: Compiled, fn: Fn, type_: str) -> Compiled:
    windows = dict(a.windows)
    for slot, seconds in b.windows.items():
        windows[slot] = max(seconds, windows.get(slot, 0.0))
    return Compiled(fn, type_, a.inputs | b.inputs, windows, a.uses_clock or b.uses_clock)


def _binary(lf: Fn, rf: Fn, op: Callable[[Any, Any], Any]) -> Fn:
    def binary(env: Env) -> Any:
        x = lf(env)
        if x is None:
            return None
        y = rf(env)
        if y is None:
            return None
        return op(x, y)

    return binary


def _and(lf: Fn, rf: Fn) -> Fn:
    def both(env: Env) -> bool | None:
        x = lf(env)
        if x is False:
            return False
        y = rf(env)
        if y is False:
            return False
        return None if x is None or y is None else True

    return both


def _or(lf: Fn, rf: Fn) -> Fn:
    def either(env: Env) -> bool | None:
        x = lf(env)
        if x is True:
            return True
        y = rf(env)
        if y is True:
            return True
        return None if x is None or y is None else False

    return either


def _div(x: float, y: float) -> float | None:
    if y == 0:
        return None
    q = x / y
    return q if math.isfinite(q) else None


def _mod(x: float, y: float) -> float | None:
    return None if y == 0 else x % y


def compile_expression(text: str, inputs: Sequence[str], *, want: str = "bool") -> Compiled:
    """Parse and type-check ``text`` over the named ``inputs``; raise ExprError saying where."""
    if len(text) > MAX_LENGTH:
        raise ExprError(f"longer than {MAX_LENGTH} characters", 1, 1)
    parser = _Parser(text, inputs)
    compiled = parser.parse()
    if compiled.type != want:
        example = "depth > 150" if want == "bool" else "depth * 2"
        need, got = ("a condition (true or false)", "a number") if want == "bool" else ("a number", "a condition")
        raise ExprError(f"this must be {need}, e.g. {example}; it is {got}", 1, 1)
    return compiled


def is_input_name(name: str) -> bool:
    return re.fullmatch(r"[a-z_][a-z0-9_]{0,47}", name) is not None and name not in RESERVED
