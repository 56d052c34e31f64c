"""Device profiles: declarative descriptions of a sensor model, one TOML file each.

A profile says what a model's registers mean (address, data type, word order, scale,
unit) so that adding a sensor model whose protocol is already known is a new file in
``drivers/``, not new Python. Profiles ship inside the wheel as ``edgeagent/drivers``;
in a source checkout they are read from the repository's ``drivers/`` folder.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeagent.errors import ConfigError, ConfigProblem, DecodeError
from edgeagent.protocols.modbus import DataType, Function, WordOrder, plan_reads, register_count

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")]

# Length units a profile may convert between (factor to millimetres).
LENGTH_UNITS_MM: dict[str, float] = {"mm": 1.0, "cm": 10.0, "dm": 100.0, "m": 1000.0}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ForbiddenRange(_Strict):
    """Addresses the device must never be asked for (it faults or answers garbage)."""

    function: Function = "holding"
    first: int = Field(ge=0, le=0xFFFF)
    last: int = Field(ge=0, le=0xFFFF)

    @model_validator(mode="after")
    def _ordered(self) -> ForbiddenRange:
        if self.last < self.first:
            raise ValueError("last must be >= first")
        return self


class RegisterPoint(_Strict):
    """One value read from registers; the result is ``raw * scale * 10**-decimals + offset``."""

    name: Name
    description: str = ""
    function: Literal["holding", "input"] = "holding"
    address: int = Field(ge=0, le=0xFFFF)
    type: DataType = "int16"
    word_order: WordOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = Field(min_length=1, max_length=16)
    decimals_register: int | None = Field(
        default=None, ge=0, le=0xFFFF, description="register holding the number of decimals"
    )
    unit_register: int | None = Field(
        default=None, ge=0, le=0xFFFF, description="register holding the device's unit code"
    )
    unit_codes: dict[str, str] = Field(
        default_factory=dict, description="unit code -> unit symbol, converted to `unit`"
    )

    @model_validator(mode="after")
    def _units(self) -> RegisterPoint:
        if (self.unit_register is None) != (not self.unit_codes):
            raise ValueError("unit_register and unit_codes go together")
        for code, symbol in self.unit_codes.items():
            if not code.isdigit():
                raise ValueError(f"unit code {code!r} must be a decimal number")
            if symbol != self.unit and (symbol not in LENGTH_UNITS_MM or self.unit not in LENGTH_UNITS_MM):
                raise ValueError(f"cannot convert unit code {code} ({symbol}) to {self.unit}")
        return self

    @property
    def registers(self) -> int:
        """Registers the raw value occupies."""
        return register_count(self.type)


class ModbusProfile(_Strict):
    """A Modbus device model."""

    manufacturer: str = Field(min_length=1)
    model: str = Field(min_length=1)
    description: str = ""
    protocol: Literal["modbus"]
    default_poll_interval_s: float = Field(default=10.0, gt=0, le=86400)
    max_gap_registers: int = Field(default=8, ge=0, le=124)
    forbidden: list[ForbiddenRange] = Field(default_factory=list)
    points: list[RegisterPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _plan(self) -> ModbusProfile:
        names = [p.name for p in self.points]
        if len(set(names)) != len(names):
            raise ValueError("point names must be unique")
        try:
            plan_reads(
                self.wanted_ranges(),
                max_gap=self.max_gap_registers,
                forbidden=[(f.function, f.first, f.last) for f in self.forbidden],
            )
        except DecodeError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def wanted_ranges(self) -> list[tuple[Function, int, int]]:
        """Every register range a poll needs: values plus their decimals and unit registers."""
        wanted: list[tuple[Function, int, int]] = []
        for p in self.points:
            wanted.append((p.function, p.address, p.registers))
            if p.decimals_register is not None:
                wanted.append((p.function, p.decimals_register, 1))
            if p.unit_register is not None:
                wanted.append((p.function, p.unit_register, 1))
        return wanted


Profile = ModbusProfile


def drivers_dir() -> Path:
    """Where profiles live: inside the installed package, else the source checkout."""
    packaged = Path(__file__).resolve().parent / "drivers"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "drivers"


def format_validation_error(file: str, exc: ValidationError, prefix: str = "") -> list[ConfigProblem]:
    """Turn pydantic's errors into ``file: a.b[2].c: message`` problems."""
    problems = []
    for err in exc.errors():
        path = prefix
        for part in err["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}" if path else str(part)
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        problems.append(ConfigProblem(file=file, path=path, message=message))
    return problems


def read_toml(path: Path) -> dict[str, object]:
    """Parse a TOML file, turning syntax and I/O errors into a ConfigError."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"cannot read: {exc.strerror}")]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"invalid TOML: {exc}")]) from exc


def load_profile_file(path: Path) -> Profile:
    """Load and validate one profile file."""
    data = read_toml(path)
    try:
        return ModbusProfile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc)) from exc


@cache
def load_profile(name: str) -> Profile:
    """Load a shipped profile by name (its file name without ``.toml``)."""
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError([ConfigProblem("", "", f"invalid profile name {name!r}")])
    path = drivers_dir() / f"{name}.toml"
    if not path.is_file():
        raise ConfigError([ConfigProblem(str(path), "", f"no such profile {name!r}")])
    return load_profile_file(path)


def available_profiles() -> list[str]:
    """Names of every shipped profile."""
    return sorted(p.stem for p in drivers_dir().glob("*.toml"))
