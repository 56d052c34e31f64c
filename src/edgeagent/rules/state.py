"""The engine's state across restarts: two small JSON files in the state folder.

``rules-state.json`` keeps every active alarm (with its acknowledgement), every pending
``for_s`` / ``clear_for_s`` deadline as an absolute time, the next reminder, the value
each written point returns to, and failed actions. So a condition pending for 40 of its
60 s when the agent dies raises 20 s after the restart, not 60; an alarm active before
is not raised again. ``rules-windows.json`` keeps the windows' contents.

An SD card must not wear out, so nothing is written per reading. Each file is replaced
whole (a temporary file, fsync'd, renamed over the old one, the folder fsync'd), so a
crash leaves the old one or the new one: the state at once after an alarm transition,
an acknowledgement or a new intent, and within ``SOON_S`` after a deadline was set or
cancelled (so at most one write per ``SOON_S`` however a noisy level makes a condition
come and go); the windows at most once per ``WINDOWS_S``. A rule whose definition
changed while the agent was stopped keeps its active alarms but starts its timers and
windows afresh (its ``key`` says so).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from edgeagent.rules.engine import CLEAR, RAISE, RENOTIFY, Engine, ExtraAlarm
from edgeagent.rules.model import CONDITION, STALE, Instance, Transition

log = logging.getLogger(__name__)

STATE_FILE = "rules-state.json"
WINDOWS_FILE = "rules-windows.json"
VERSION = 1
SOON_S = 5.0
WINDOWS_S = 60.0


def _num(x: object) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def snapshot(engine: Engine) -> dict[str, Any]:
    rules: dict[str, Any] = {}
    for name, rt in engine.runtimes.items():
        subjects: dict[str, Any] = {}
        for inst in rt.instances:
            entry: dict[str, Any] = {}
            if inst.alarm_state is not None:
                entry.update(alarm=inst.alarm_state, raised_ts=inst.raised_ts, acked_by=inst.acked_by)
                entry.update(acked_ts=inst.acked_ts, next_renotify=inst.next_renotify)
            if inst.pending_raise is not None:
                entry["pending_raise"] = inst.pending_raise
            if inst.pending_clear is not None:
                entry["pending_clear"] = inst.pending_clear
            if inst.stale_active:
                entry["stale"] = True
            if entry:
                subjects[inst.subject] = entry
        rules[name] = {
            "key": rt.bound.key,
            "severity": rt.bound.severity,
            "alarm": rt.bound.alarm,
            "subjects": subjects,
        }
    extra = {
        f"{source}\n{kind}": {
            "rule": a.rule,
            "severity": a.severity,
            "what": a.what,
            "message": a.message,
            "raised_ts": a.raised_ts,
            "state": a.state,
            "acked_by": a.acked_by,
        }
        for (source, kind), a in engine.extra.items()
    }
    released = {f"{d}\n{p}": list(v) for (d, p), v in engine.arbiter.released.items()}
    return {"version": VERSION, "saved_ts": engine.now, "rules": rules, "extra": extra, "released": released}


def windows_snapshot(engine: Engine) -> dict[str, Any]:
    """Every window's samples: {"version", "keys": {rule: key}, "windows": {rule: {subject: {input: [[t, v]]}}}}."""
    out: dict[str, Any] = {}
    for name, rt in engine.runtimes.items():
        for inst in rt.instances:
            windows = {rt.bound.inputs[i]: w.dump() for i, w in enumerate(inst.windows) if w is not None and len(w)}
            if windows:
                out.setdefault(name, {})[inst.subject] = windows
    keys = {name: rt.bound.key for name, rt in engine.runtimes.items() if name in out}
    return {"version": VERSION, "keys": keys, "windows": out}


def restore_windows(engine: Engine, data: object, now: float) -> None:
    """Refill the windows of rules whose definition is unchanged; the rest start empty."""
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("windows"), dict):
        return
    keys = data.get("keys") if isinstance(data.get("keys"), dict) else {}
    for name, subjects in data["windows"].items():
        rt = engine.runtimes.get(name)
        if rt is None or keys.get(name) != rt.bound.key or not isinstance(subjects, dict):
            continue
        for inst in rt.instances:
            saved = subjects.get(inst.subject)
            if not isinstance(saved, dict):
                continue
            for slot, input_name in enumerate(rt.bound.inputs):
                window = inst.windows[slot]
                if window is not None and input_name in saved:
                    window.load(saved[input_name], now)


def restore(engine: Engine, data: object, now: float) -> int:
    """Put saved state back into a freshly built engine; return the alarms restored active.

    Whatever is malformed is skipped (the file is ours, but a card can garble it): a
    restore never raises.
    """
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return 0
    active = 0
    rules = data.get("rules") if isinstance(data.get("rules"), dict) else {}
    for name, saved_rule in rules.items():
        if not isinstance(saved_rule, dict) or not isinstance(saved_rule.get("subjects"), dict):
            continue
        rt = engine.runtimes.get(name)
        by_subject = {i.subject: i for i in rt.instances} if rt is not None else {}
        same = rt is not None and saved_rule.get("key") == rt.bound.key
        for subject, saved in saved_rule["subjects"].items():
            if not isinstance(saved, dict):
                continue
            inst = by_subject.get(subject)
            if inst is None:
                _gone(engine, name, subject, saved, saved_rule, now)
                continue
            active += _restore_instance(engine, inst, saved, same, now)
    extra = data.get("extra") if isinstance(data.get("extra"), dict) else {}
    for key, a in extra.items():
        source, _, kind = str(key).partition("\n")
        if isinstance(a, dict) and isinstance(a.get("message"), str) and _num(a.get("raised_ts")) is not None:
            engine.extra[(source, kind)] = ExtraAlarm(
                str(a.get("rule", "")),
                str(a.get("severity", "major")),
                str(a.get("what", "")),
                a["message"],
                float(a["raised_ts"]),
                "acknowledged" if a.get("state") == "acknowledged" else "raised",
                a.get("acked_by") if isinstance(a.get("acked_by"), str) else None,
            )
            active += 1
    released = data.get("released") if isinstance(data.get("released"), dict) else {}
    for key, v in released.items():
        device, _, point = str(key).partition("\n")
        if isinstance(v, list) and len(v) == 5 and (device, point) in engine.arbiter.claimants:
            engine.arbiter.released[(device, point)] = (v[0], _num(v[1]), float(v[2]), str(v[3]), str(v[4]))
    for point in list(engine.arbiter.claimants):
        engine.arbiter.decide(point, now)  # what each point should hold; the writer makes sure of it
    return active


def _restore_instance(engine: Engine, inst: Instance, saved: dict[str, Any], same: bool, now: float) -> int:
    active = 0
    if saved.get("alarm") in ("raised", "acknowledged") and _num(saved.get("raised_ts")) is not None:
        inst.alarm_state, inst.raised_ts = saved["alarm"], float(saved["raised_ts"])
        inst.acked_by = saved.get("acked_by") if isinstance(saved.get("acked_by"), str) else None
        inst.acked_ts = _num(saved.get("acked_ts"))
        active = 1
        renotify = _num(saved.get("next_renotify"))
        if inst.alarm_state == "raised" and renotify is not None and inst.rt.bound.renotify_s:
            inst.next_renotify = renotify if same else now + inst.rt.bound.renotify_s
            engine._push(inst.next_renotify, RENOTIFY, inst)
    if saved.get("stale"):
        inst.stale_active = True  # cleared once every input has brought a reading again
        inst.stale[:] = [True] * len(inst.stale)
    if not same:
        return active
    if inst.alarm_state is None and (deadline := _num(saved.get("pending_raise"))) is not None:
        inst.pending_raise = deadline
        engine._push(deadline, RAISE, inst)
    if inst.alarm_state is not None and (deadline := _num(saved.get("pending_clear"))) is not None:
        inst.pending_clear = deadline
        engine._push(deadline, CLEAR, inst)
    return active


def _gone(
    engine: Engine, rule: str, subject: str, saved: dict[str, Any], saved_rule: dict[str, Any], now: float
) -> None:
    """A saved alarm whose rule or subject is no longer configured: it clears."""
    severity = str(saved_rule.get("severity", "warning"))
    alarm = saved_rule.get("alarm") is not False
    why = "cleared because its rule or subject was removed while the agent was stopped"
    if saved.get("alarm") in ("raised", "acknowledged"):
        engine.on_transition(Transition(now, rule, subject, rule, "cleared", severity, why, CONDITION, alarm))
    if saved.get("stale"):
        engine.on_transition(Transition(now, rule, subject, f"{rule}:stale", "cleared", "warning", why, STALE))


class StateFile:
    """One of the files: read once at start, replaced atomically on each save."""

    def __init__(self, folder: Path, name: str = STATE_FILE) -> None:
        self.path = folder / name
        self.writes = 0

    def load(self) -> object:
        for leftover in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # a save cut short by a crash
            with contextlib.suppress(OSError):
                leftover.unlink()
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("rules state %s unreadable (%s): starting without it", self.path, exc)
            return None

    def save(self, data: dict[str, Any]) -> None:
        """Write ``data`` so that a crash at any moment leaves the old file or the new one."""
        text = json.dumps(data, separators=(",", ":"), allow_nan=False)
        # Its own name, so a save still running in a thread (at a stop) never shares a file with the next.
        tmp = self.path.with_name(f".{self.path.name}.{threading.get_ident()}.tmp")
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self.writes += 1
