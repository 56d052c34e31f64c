"""Rules in the config: ``[[rules]]`` in the site file and in included rule packs.

A rule names its subjects (devices by tag or id: one alarm each), its inputs (a point of
each subject, ``device/point``, or ``tag:<tag>/point`` for the one device with that
tag), a ``when`` condition held for ``for_s``, an optional ``clear_when`` held for
``clear_for_s`` (hysteresis), a severity and actions (docs/rules.md). These models check
the shape; ``bind.py`` checks a rule against the site it runs on.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from edgeagent.errors import ConfigError, ConfigProblem
from edgeagent.profiles import format_validation_error, read_toml

if TYPE_CHECKING:
    from edgeagent.config import SiteConfig

RuleName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
Severity = Literal["critical", "major", "minor", "warning", "info"]
SITE_SUBJECT = "gateway"  # the subject of a rule without subjects: the site as a whole
TAG_PREFIX = "tag:"


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: give an IANA name such as 'Europe/Berlin' or 'UTC'") from None
    return name


TimeZoneName = Annotated[str, AfterValidator(_zone)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SubjectsConfig(_Strict):
    """Which devices a rule watches: one alarm per device."""

    tags: list[str] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some(self) -> SubjectsConfig:
        if not self.tags and not self.devices:
            raise ValueError("give tags or devices (or leave subjects out for one site-wide alarm)")
        return self


class ActionConfig(_Strict):
    """What happens on a raise or a clear: one of write, event, raise_alarm, clear_alarm."""

    on: Literal["raise", "clear"]
    write: str | None = Field(default=None, description="device/point or tag:<tag>/point")
    value: bool | float | str | None = None
    event: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    raise_alarm: RuleName | None = None
    clear_alarm: RuleName | None = None

    @model_validator(mode="after")
    def _one(self) -> ActionConfig:
        given = [k for k in ("write", "event", "raise_alarm", "clear_alarm") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("an action has exactly one of write, event, raise_alarm, clear_alarm")
        if (self.write is None) != (self.value is None):
            raise ValueError("write and value go together")
        return self


class RuleConfig(_Strict):
    """One rule; see docs/rules.md."""

    name: RuleName
    description: str = ""
    subjects: SubjectsConfig | None = None
    inputs: dict[str, str] = Field(default_factory=dict)
    when: str = Field(min_length=1)
    for_s: float = Field(default=0.0, ge=0, le=7 * 86400)
    clear_when: str | None = Field(default=None, min_length=1)
    clear_for_s: float = Field(default=0.0, ge=0, le=7 * 86400)
    severity: Severity = "warning"
    alarm: bool = Field(default=True, description="false: a state that only drives actions, no alarm upstream")
    renotify_s: float | None = Field(default=None, ge=10, le=7 * 86400)
    priority: int = Field(default=0, ge=-1000, le=1000, description="for points written by several rules")
    stale_s: float | None = Field(default=None, gt=0, le=7 * 86400)
    actions: list[ActionConfig] = Field(default_factory=list)

    _file: str = PrivateAttr(default="<config>")
    _where: str = PrivateAttr(default="rules[?]")

    def problem(self, key: str, message: str) -> ConfigProblem:
        path = f"{self._where}.{key}" if key else self._where
        return ConfigProblem(self._file, path, f"rule {self.name!r}: {message}")


class RulePack(_Strict):
    """A file of rules a config includes (``include = ["rules/fog.toml"]``)."""

    description: str = ""
    rules: list[RuleConfig] = Field(default_factory=list)


# -- packs ---------------------------------------------------------------------------------


def _locate(rules: list[RuleConfig], file: str) -> None:
    for i, rule in enumerate(rules):
        rule._file, rule._where = file, f"rules[{i}]"


def read_pack(path: Path) -> list[RuleConfig]:
    """One rule pack, validated; problems name the pack's own file and key paths."""
    data = read_toml(path)
    try:
        pack = RulePack.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc, data=data, schema=RulePack)) from exc
    _locate(pack.rules, str(path))
    return list(pack.rules)


def included_rules(site: SiteConfig, base: Path, file: str) -> tuple[list[RuleConfig], list[ConfigProblem]]:
    """The site's own rules followed by those of every pack it includes (paths relative to ``base``)."""
    rules = list(site.rules)
    _locate(rules, file)
    problems: list[ConfigProblem] = []
    for i, pattern in enumerate(site.include):
        full = base / pattern
        paths = sorted(Path(p) for p in glob.glob(str(full))) if glob.has_magic(pattern) else [full]
        if not paths:
            problems.append(ConfigProblem(file, f"include[{i}]", f"no file matches {pattern!r}"))
        for path in paths:
            try:
                rules += read_pack(path)
            except ConfigError as exc:
                problems += exc.problems
    return rules, problems
