"""Rules offline: a recorded trace through the same engine on a virtual clock, and a rule listing.

A trace is CSV with a header ``ts,device,point,value``: Unix seconds, a device id, a
point, and a number (empty: a reading without a value, as a sensor's "no value"). Rows
must come in time order. Before each row the engine's timers fire up to the row's
time, each at its own deadline, exactly as the live engine fires them on the wall
clock; timers due after the last row do not fire. Each transition and action is one
JSON object per line (docs/rules.md).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from edgeagent.rules.bind import BoundRule
from edgeagent.rules.engine import Engine
from edgeagent.rules.model import RAISED_BY_ACTION, STALE, Event, Intent, Transition

TRACE_COLUMNS = ("ts", "device", "point", "value")


class TraceError(ValueError):
    """A trace row that cannot be read; the message names the line."""


@dataclass(frozen=True, slots=True)
class TraceRow:
    ts: float
    device: str
    point: str
    value: float | str | None


def read_trace(lines: Iterable[str], name: str = "trace") -> Iterator[TraceRow]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != TRACE_COLUMNS:
        raise TraceError(f"{name}: line 1: the header must be {','.join(TRACE_COLUMNS)}")
    last = -math.inf
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 4:
            raise TraceError(f"{name}: line {line}: 4 columns expected, got {len(row)}")
        ts_text, device, point, value_text = (cell.strip() for cell in row)
        try:
            ts = float(ts_text)
        except ValueError:
            raise TraceError(f"{name}: line {line}: ts {ts_text!r} is not a number of seconds") from None
        if not math.isfinite(ts) or ts < last:
            raise TraceError(f"{name}: line {line}: ts {ts_text} goes back in time (rows must be in time order)")
        last = ts
        value: float | str | None
        if value_text == "":
            value = None
        else:
            try:
                value = float(value_text)
            except ValueError:
                value = value_text
        yield TraceRow(ts, device, point, value)


def transition_line(t: Transition) -> dict[str, Any] | None:
    """A transition as ``rules test`` prints it (reminders and acknowledgements are not)."""
    if t.state not in ("raised", "cleared"):
        return None
    if t.what == STALE:
        state = "stale" if t.state == "raised" else "fresh"
        return {"t": t.ts, "kind": "alarm", "rule": t.rule, "subject": t.subject, "state": state,
                "severity": t.severity, "inputs": list(t.inputs)}  # fmt: skip
    line: dict[str, Any] = {"t": t.ts, "kind": "alarm", "rule": t.rule, "subject": t.subject, "state": t.state}
    line["severity"] = t.severity
    if t.what == RAISED_BY_ACTION:
        line["rule"], line["by"] = t.kind, t.rule
    return line


def intent_line(i: Intent) -> dict[str, Any]:
    value: float | str = int(i.value) if isinstance(i.value, float) and i.value.is_integer() else i.value
    return {"t": i.ts, "kind": "action", "rule": i.rule, "subject": i.subject, "device": i.device,
            "point": i.point, "value": value}  # fmt: skip


def event_line(e: Event) -> dict[str, Any]:
    return {"t": e.ts, "kind": "event", "rule": e.rule, "subject": e.subject, "event": e.name, "state": e.state}


def replay(rules: list[BoundRule], rows: Iterable[TraceRow], emit: Callable[[dict[str, Any]], None]) -> int:
    """Run ``rows`` through a fresh engine; return the number of rows read."""
    engine: Engine | None = None
    count = 0

    def on_transition(t: Transition) -> None:
        line = transition_line(t)
        if line is not None:
            emit(line)

    for row in rows:
        if engine is None:
            engine = Engine(
                rules,
                now=row.ts,
                on_transition=on_transition,
                on_intent=lambda i: emit(intent_line(i)),
                on_event=lambda e: emit(event_line(e)),
            )
        engine.advance(row.ts)
        engine.on_reading(row.device, row.point, row.value, row.value is not None, row.ts)
        count += 1
    return count


def replay_file(rules: list[BoundRule], path: Path, out: TextIO) -> int:
    with path.open(newline="") as fh:
        return replay(rules, read_trace(fh, str(path)), lambda line: print(json.dumps(line), file=out))


def describe(rule: BoundRule) -> list[str]:
    """What ``rules check`` prints for one bound rule: subjects, inputs, conditions, writes."""
    subjects = [s for s, _ in rule.subjects]
    lines = [f"{rule.name} ({rule.severity}{'' if rule.alarm else ', no alarm'}, priority {rule.priority})"]
    lines.append(f"  subjects: {', '.join(subjects)}")
    for slot, name in enumerate(rule.inputs):
        sources = sorted({f"{src[slot].device}/{src[slot].point}" for _, src in rule.subjects})
        stale = sorted({src[slot].stale_s for _, src in rule.subjects})
        shown = ", ".join(sources) if len(sources) <= 4 else f"{sources[0]} … ({len(sources)} devices)"
        lines.append(f"  input {name}: {shown} (stale after {'/'.join(f'{s:g}' for s in stale)} s)")
    lines.append(f"  raise: {rule.when_text}" + (f" for {rule.for_s:g} s" if rule.for_s else ""))
    clear = rule.clear_when_text or f"not ({rule.when_text})"
    lines.append(f"  clear: {clear}" + (f" for {rule.clear_for_s:g} s" if rule.clear_for_s else ""))
    for a in rule.actions:
        if a.kind == "write":
            value = intent_value(a.value)
            lines.append(f"  on {a.on}: write {value} to {', '.join(f'{d}/{p}' for d, p in a.targets)}")
        else:
            lines.append(f"  on {a.on}: {a.kind.replace('_', ' ')} {a.name}")
    return lines


def intent_value(value: float | str | None) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
