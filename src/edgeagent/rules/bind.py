"""Rules bound to a site: each rule checked against devices, profiles and points, and compiled.

``bind_rules`` turns every ``RuleConfig`` into the ``BoundRule`` the engine runs: its
subjects (devices by tag or id; one alarm each), each subject's inputs resolved to a
device and point with a staleness limit, its expressions compiled, its writes checked
against the profile exactly as a write would be. ``check-config``, ``run``, a reload and
``rules test`` all go through it, so they cannot disagree. Every problem names the file,
the key path and the rule; an expression's problem also its line:column.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgeagent.errors import ConfigProblem, InvalidWrite
from edgeagent.profiles import BthomeProfile, ModbusProfile, Profile, RadarProfile, RuuviProfile, did_you_mean
from edgeagent.rules.config import SITE_SUBJECT, TAG_PREFIX, ActionConfig, RuleConfig, read_pack
from edgeagent.rules.expr import Compiled, ExprError, compile_expression, is_input_name

if TYPE_CHECKING:
    from edgeagent.config import DeviceConfig, SiteConfig

MIN_STALE_S = 10.0
STALE_POLLS = 3  # an input is stale after this many poll intervals without a reading


@dataclass(frozen=True, slots=True)
class Source:
    """Where one input of one subject comes from."""

    device: str
    point: str
    stale_s: float


@dataclass(frozen=True, slots=True)
class BoundAction:
    kind: str  # "write" | "event" | "raise_alarm" | "clear_alarm"
    on: str  # "raise" | "clear"
    targets: tuple[tuple[str, str], ...] = ()  # (device, point) for a write
    value: float | str | None = None  # as written in the config
    expected: float | None = None  # what reading the point back must show
    name: str = ""  # the event or alarm


@dataclass(frozen=True, slots=True)
class BoundRule:
    """A rule checked against the site: compiled, with its subjects' inputs resolved."""

    name: str
    severity: str
    alarm: bool
    priority: int
    for_s: float
    clear_for_s: float
    renotify_s: float | None
    inputs: tuple[str, ...]
    when: Compiled = field(compare=False)
    clear_when: Compiled | None = field(compare=False)
    subjects: tuple[tuple[str, tuple[Source, ...]], ...]
    actions: tuple[BoundAction, ...]
    key: str  # changes when anything the rule runs on changes
    time_zone: str | None = None
    when_text: str = ""
    clear_when_text: str | None = None

    @property
    def uses_clock(self) -> bool:
        return self.when.uses_clock or (self.clear_when is not None and self.clear_when.uses_clock)

    def windows(self) -> dict[int, float]:
        out = dict(self.when.windows)
        if self.clear_when is not None:
            for slot, seconds in self.clear_when.windows.items():
                out[slot] = max(seconds, out.get(slot, 0.0))
        return out


def default_stale_s(dev: DeviceConfig, profile: Profile) -> float:
    """How long an input of this device may go without a reading before it is stale."""
    if isinstance(profile, BthomeProfile | RuuviProfile):
        return dev.stale_after_s or profile.stale_after_s
    if isinstance(profile, RadarProfile):
        interval = dev.poll_interval_s or profile.report_interval_s
    else:
        interval = dev.poll_interval_s or getattr(profile, "default_poll_interval_s", 10.0)
    return max(STALE_POLLS * interval, MIN_STALE_S)


class _Binder:
    def __init__(self, site: SiteConfig, profiles: dict[str, Profile]) -> None:
        self.devices = {d.id: d for d in site.devices}
        self.profiles = profiles
        self.site = site
        self.time_zone: str | None = getattr(site.gateway, "time_zone", None)

    def profile(self, device_id: str) -> Profile | None:
        dev = self.devices.get(device_id)
        return None if dev is None else self.profiles.get(dev.profile)

    def has_point(self, device_id: str, point: str) -> str | None:
        """None when the device has the point, else why not."""
        profile = self.profile(device_id)
        if profile is None:
            return None  # its profile is reported where the device is
        names = [p.name for p in profile.points]
        if point in names:
            return None
        profile_name = self.devices[device_id].profile
        return f"device {device_id!r} ({profile_name}) has no point {point!r}{did_you_mean(point, names)}"

    def tagged(self, tag: str) -> list[str]:
        return [d.id for d in self.site.devices if tag in d.tags]

    def device_ref(self, text: str) -> tuple[list[str], str, str | None]:
        """``device/point`` or ``tag:<tag>/point`` -> (devices, point, problem)."""
        who, sep, point = text.rpartition("/")
        if not sep or not who or not point:
            return [], "", f"{text!r} is not device/point or tag:<tag>/point"
        if who.startswith(TAG_PREFIX):
            tag = who[len(TAG_PREFIX) :]
            found = self.tagged(tag)
            return found, point, None if found else f"no device carries tag {tag!r}"
        if who not in self.devices:
            return [], point, f"no device {who!r}{did_you_mean(who, self.devices)}"
        return [who], point, None

    def stale_s(self, rule: RuleConfig, device_id: str) -> float:
        if rule.stale_s is not None:
            return rule.stale_s
        dev = self.devices[device_id]
        profile = self.profiles.get(dev.profile)
        return default_stale_s(dev, profile) if profile is not None else MIN_STALE_S

    def subjects(self, rule: RuleConfig, problems: list[ConfigProblem]) -> list[str]:
        if rule.subjects is None:
            return [SITE_SUBJECT]
        out: list[str] = []
        for j, dev_id in enumerate(rule.subjects.devices):
            if dev_id not in self.devices:
                hint = did_you_mean(dev_id, self.devices)
                problems.append(rule.problem(f"subjects.devices[{j}]", f"no device {dev_id!r}{hint}"))
            elif dev_id not in out:
                out.append(dev_id)
        for j, tag in enumerate(rule.subjects.tags):
            found = self.tagged(tag)
            if not found:
                problems.append(rule.problem(f"subjects.tags[{j}]", f"no device carries tag {tag!r}"))
            out += [d for d in found if d not in out]
        return out

    def inputs(self, rule: RuleConfig, subjects: list[str], problems: list[ConfigProblem]) -> list[tuple[Source, ...]]:
        per_subject: list[list[Source]] = [[] for _ in subjects]
        for name, ref in rule.inputs.items():
            key = f"inputs.{name}"
            if not is_input_name(name):
                problems.append(
                    rule.problem(
                        key, f"{name!r} cannot name an input (lower case, digits, _; not a word of the language)"
                    )
                )
            if "/" in ref:
                devices, point, why = self.device_ref(ref)
                if why is None and len(devices) > 1:
                    why = f"{ref!r} matches {len(devices)} devices ({', '.join(devices)}): an input reads one"
                why = why or self.has_point(devices[0], point)
                if why:
                    problems.append(rule.problem(key, why))
                    continue
                for sources in per_subject:
                    sources.append(Source(devices[0], point, self.stale_s(rule, devices[0])))
                continue
            if rule.subjects is None:
                problems.append(
                    rule.problem(
                        key, f"{ref!r} is a point of each subject, but the rule has no subjects: write device/point"
                    )
                )
                continue
            for sources, subject in zip(per_subject, subjects, strict=True):
                why = self.has_point(subject, ref)
                if why:
                    problems.append(rule.problem(key, why))
                sources.append(Source(subject, ref, self.stale_s(rule, subject)))
        return [tuple(s) for s in per_subject]

    def action(self, rule: RuleConfig, k: int, action: ActionConfig, problems: list[ConfigProblem]) -> BoundAction:
        key = f"actions[{k}]"
        if action.write is None:
            kind = "event" if action.event else "raise_alarm" if action.raise_alarm else "clear_alarm"
            name = action.event or action.raise_alarm or action.clear_alarm or ""
            return BoundAction(kind, action.on, name=name)
        devices, point, why = self.device_ref(action.write)
        if why:
            problems.append(rule.problem(f"{key}.write", why))
            return BoundAction("write", action.on)
        expected: float | None = None
        for dev_id in devices:
            why, expected = self.writable(dev_id, point, action.value)
            if why:
                about_point = "no point" in why or "read-only" in why or "only Modbus" in why
                problems.append(rule.problem(f"{key}.write" if about_point else f"{key}.value", why))
        value = action.value
        shown: float | str | None = float(value) if isinstance(value, bool) else value
        return BoundAction("write", action.on, tuple((d, point) for d in devices), shown, expected)

    def writable(self, dev_id: str, point: str, value: object) -> tuple[str | None, float | None]:
        """(why not, the value a read-back must show) for writing ``value`` to ``dev_id/point``."""
        profile = self.profile(dev_id)
        if profile is None:
            return None, None
        if not isinstance(profile, ModbusProfile):
            return f"device {dev_id!r} speaks {profile.protocol}: only Modbus points take writes", None
        from edgeagent.devices.modbus import ModbusDevice

        device = ModbusDevice(self.devices[dev_id], profile)
        written: float | str = float(value) if isinstance(value, bool) else value  # type: ignore[assignment]
        try:
            plan = device.plan_write(point, written)
        except InvalidWrite as exc:
            text = str(exc)
            return (text if text.startswith(dev_id) else f"{dev_id}.{point}: {text}"), None
        if plan.function == "coil":
            return None, float(plan.values[0])
        p = next(q for q in profile.points if q.name == point)
        if isinstance(written, str) and p.enum:
            codes = {label.lower(): code for code, label in p.enum.items()}
            return None, float(codes.get(written.strip().lower(), written))
        return None, float(written)

    def expression(self, rule: RuleConfig, key: str, text: str, problems: list[ConfigProblem]) -> Compiled | None:
        try:
            compiled = compile_expression(text, list(rule.inputs))
        except ExprError as exc:
            problems.append(rule.problem(key, f"{exc.line}:{exc.column}: {exc.message}"))
            return None
        if compiled.uses_clock and self.time_zone is None:
            message = 'uses the time of day: set gateway.time_zone (e.g. "Europe/Berlin")'
            problems.append(rule.problem(key, message))
        return compiled

    def bind(self, rule: RuleConfig) -> tuple[BoundRule | None, list[ConfigProblem]]:
        problems: list[ConfigProblem] = []
        subjects = self.subjects(rule, problems)
        sources = self.inputs(rule, subjects, problems)
        when = self.expression(rule, "when", rule.when, problems)
        clear_when = None if rule.clear_when is None else self.expression(rule, "clear_when", rule.clear_when, problems)
        actions = tuple(self.action(rule, k, a, problems) for k, a in enumerate(rule.actions))
        if problems or when is None:
            return None, problems
        bound_subjects = tuple(zip(subjects, sources, strict=True))
        digest = hashlib.sha256(
            json.dumps(
                [
                    rule.model_dump(mode="json"),
                    [[s, [list(map(str, (x.device, x.point, x.stale_s))) for x in src]] for s, src in bound_subjects],
                    [repr(a) for a in actions],
                    self.time_zone,
                ],
                sort_keys=True,
            ).encode()
        ).hexdigest()[:16]
        bound = BoundRule(
            name=rule.name,
            severity=rule.severity,
            alarm=rule.alarm,
            priority=rule.priority,
            for_s=rule.for_s,
            clear_for_s=rule.clear_for_s,
            renotify_s=rule.renotify_s,
            inputs=tuple(rule.inputs),
            when=when,
            clear_when=clear_when,
            subjects=bound_subjects,
            actions=actions,
            key=digest,
            time_zone=self.time_zone,
            when_text=" ".join(rule.when.split()),
            clear_when_text=None if rule.clear_when is None else " ".join(rule.clear_when.split()),
        )
        return bound, []


def bind_rules(site: SiteConfig, profiles: dict[str, Profile]) -> tuple[list[BoundRule], list[ConfigProblem]]:
    """Every rule of the site checked and bound; problems for those that cannot be."""
    binder = _Binder(site, profiles)
    bound: list[BoundRule] = []
    problems: list[ConfigProblem] = []
    first: dict[str, RuleConfig] = {}
    for rule in site.rules:
        if rule.name in first:
            seen = first[rule.name]
            problems.append(rule.problem("name", f"duplicate of {seen._file}: {seen._where}.name"))
            continue
        first[rule.name] = rule
        b, p = binder.bind(rule)
        problems += p
        if b is not None:
            bound.append(b)
    return bound, problems


def rule_problems(site: SiteConfig, profiles: dict[str, Profile]) -> list[ConfigProblem]:
    """What ``check-config`` reports about the rules (the cross-check's share)."""
    return bind_rules(site, profiles)[1]


def check_pack(path: Path) -> tuple[list[RuleConfig], list[ConfigProblem]]:
    """A rule pack on its own (no site to bind to): its schema and its expressions."""
    rules = read_pack(path)
    problems: list[ConfigProblem] = []
    for rule in rules:
        for key in ("when", "clear_when"):
            text = getattr(rule, key)
            if text is None:
                continue
            try:
                compile_expression(text, list(rule.inputs))
            except ExprError as exc:
                problems.append(rule.problem(key, f"{exc.line}:{exc.column}: {exc.message}"))
    return rules, problems
