"""Device profiles: declarative descriptions of a sensor model, one TOML file each.

A profile says what a model's values mean (for Modbus: address, data type, word order,
scale, unit; for a line or radio protocol: which decoded field, in which unit) so that
adding a sensor model whose protocol is already known is a new file in ``drivers/``, not
new Python. Every profile names its ``protocol``, which selects its schema. Profiles
ship inside the wheel as ``edgeagent/drivers``; in a source checkout they are read from
the repository's ``drivers/`` folder.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import os
import re
import tomllib
import types
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edgeagent.errors import ConfigError, ConfigProblem, DecodeError
from edgeagent.protocols import ruuvi
from edgeagent.protocols.modbus import DataType, Function, WordOrder, plan_reads, register_count, value_bits

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")]
Unit = Annotated[str, Field(min_length=1, max_length=16)]

# Length units a profile may convert between (factor to millimetres).
LENGTH_UNITS_MM: dict[str, float] = {"mm": 1.0, "cm": 10.0, "dm": 100.0, "m": 1000.0}

PWD_MESSAGE2_FIELDS = frozenset(
    {
        "visibility_alarm",
        "hardware_status",
        "visibility_1min_m",
        "visibility_10min_m",
        "wmo_present_weather",
        "wmo_15min",
        "wmo_1h",
        "precipitation_intensity_mm_h",
        "water_sum_mm",
        "snow_sum_mm",
    }
)
"""Numeric fields of Vaisala PWD message 2 a point can report."""
PWD_MESSAGE7_FIELDS = PWD_MESSAGE2_FIELDS | {"temperature_c", "luminance_cd_m2"}
RADAR_FIELDS = frozenset({"target_count", "nearest_range_m", "approach_speed_m_s", "frames"})
"""Per-report radar summaries: most targets in a frame, nearest range, fastest approach, frames seen."""
BLE_EXTRA_FIELDS = frozenset({"rssi_dbm"})
"""Fields every BLE device has besides its payload: the received signal strength."""
_BTHOME_NOT_NUMERIC = (0x00, 0x53, 0x54)  # packet id, text, raw


@cache
def bthome_fields() -> frozenset[str]:
    """Names of BTHome objects a point can report (imported late: it pulls in the AES code)."""
    from edgeagent.protocols import bthome

    return frozenset(t.name for i, t in bthome.OBJECT_TYPES.items() if i not in _BTHOME_NOT_NUMERIC) | BLE_EXTRA_FIELDS


RUUVI_FIELDS = frozenset(ruuvi.NUMERIC_FIELDS) | BLE_EXTRA_FIELDS


class _Strict(BaseModel):
    """Unknown keys are errors, and so is a value of the wrong TOML type (no ``"502"`` for 502, no ``true`` for 1).

    Strict mode still takes an integer where a float is expected (``poll_interval_s = 10``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _no_float_or_bool(value: object) -> object:
    """A numbered choice (7 or 8 data bits) is an integer, as any int key is.

    Even in strict mode pydantic matches ``8.0`` to ``Literal[8]`` and ``true`` to ``Literal[1]``.
    """
    if isinstance(value, float | bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


ByteSize = Annotated[Literal[7, 8], BeforeValidator(_no_float_or_bool)]
StopBits = Annotated[Literal[1, 2], BeforeValidator(_no_float_or_bool)]


class ProfileAsset(_Strict):
    """What every device of this model is, as an asset: shown on the status page."""

    category: str = Field(min_length=1, description="e.g. waterlogging sensor, visibility sensor, lamp controller")
    spec: str = Field(default="", description="measuring range, accuracy, protection class")
    datasheet: str = Field(default="", description="the manual the profile was written from")


class SerialSettings(_Strict):
    """A serial line's framing; a profile's factory defaults, which a bus may override."""

    baudrate: int = Field(ge=50, le=4_000_000)
    bytesize: ByteSize = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: StopBits = 1


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
    """One value read from registers or bits.

    A register value is ``raw * scale * 10**-decimals + offset``; ``bit``/``bits`` take
    an unsigned field out of the raw value first. Coils and discrete inputs are 0 or 1.
    ``enum`` names the codes a value may take; ``missing_raw`` lists raw values the
    device sends for "no value" (they become absent values, never numbers).
    """

    name: Name
    description: str = ""
    function: Function = "holding"
    address: int = Field(ge=0, le=0xFFFF)
    type: Literal[DataType, "bool"] = "int16"
    word_order: WordOrder = "ABCD"
    bit: int | None = Field(default=None, ge=0, le=31, description="lowest bit of a bit field")
    bits: int = Field(default=1, ge=1, le=32, description="width of the bit field")
    scale: float = 1.0
    offset: float = 0.0
    unit: Unit
    decimals_register: int | None = Field(
        default=None, ge=0, le=0xFFFF, description="register holding the number of decimals"
    )
    unit_register: int | None = Field(
        default=None, ge=0, le=0xFFFF, description="register holding the device's unit code"
    )
    unit_codes: dict[str, str] = Field(
        default_factory=dict, description="unit code -> unit symbol, converted to `unit`"
    )
    enum: dict[str, str] = Field(default_factory=dict, description="value -> label")
    missing_raw: list[int] = Field(default_factory=list, description="raw values meaning 'no value'")
    writable: bool = False
    write_min: float | None = None
    write_max: float | None = None
    label: str = Field(default="", max_length=48, description="the point's name for people")
    precision: int | None = Field(default=None, ge=0, le=6, description="decimals shown")
    fault: bool = Field(default=False, description="a set value is a fault: it degrades the device")

    @model_validator(mode="before")
    @classmethod
    def _default_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and "type" not in data and data.get("function") in ("coil", "discrete"):
            return {**data, "type": "bool"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> RegisterPoint:
        is_bit_function = self.function in ("coil", "discrete")
        if is_bit_function != (self.type == "bool"):
            raise ValueError("coils and discrete inputs are type 'bool'; registers are not")
        if is_bit_function and (
            self.bit is not None or self.scale != 1 or self.offset != 0 or self.decimals_register is not None
        ):
            raise ValueError("a coil or discrete input has no bit field, scale, offset or decimals")
        if self.bit is not None:
            if self.type not in ("uint16", "uint32"):
                raise ValueError("a bit field needs an unsigned type (uint16 or uint32)")
            if self.bit + self.bits > value_bits(self.type):  # type: ignore[arg-type]
                raise ValueError(f"bits {self.bit}..{self.bit + self.bits - 1} do not fit {self.type}")
        elif self.bits != 1:
            raise ValueError("bits is the width of a bit field: give bit too")
        if (self.unit_register is None) != (not self.unit_codes):
            raise ValueError("unit_register and unit_codes go together")
        for code, symbol in self.unit_codes.items():
            if not code.isdigit():
                raise ValueError(f"unit code {code!r} must be a decimal number")
            if symbol != self.unit and (symbol not in LENGTH_UNITS_MM or self.unit not in LENGTH_UNITS_MM):
                raise ValueError(f"cannot convert unit code {code} ({symbol}) to {self.unit}")
        for code in self.enum:
            if not code.lstrip("-").isdigit():
                raise ValueError(f"enum value {code!r} must be an integer")
        if self.writable:
            if self.function not in ("holding", "coil"):
                raise ValueError("only holding registers and coils can be written")
            if self.decimals_register is not None or self.unit_register is not None or self.bit is not None:
                raise ValueError("a writable point cannot depend on decimals or unit registers or be a bit field")
            if self.scale == 0:
                raise ValueError("a writable point needs a non-zero scale")
        elif self.write_min is not None or self.write_max is not None:
            raise ValueError("write_min and write_max are for writable points")
        if self.write_min is not None and self.write_max is not None and self.write_max < self.write_min:
            raise ValueError("write_max must be >= write_min")
        return self

    @property
    def registers(self) -> int:
        """Registers (or bits, for coils and discrete inputs) the raw value occupies."""
        return 1 if self.type == "bool" else register_count(self.type)  # type: ignore[arg-type]


class _ProfileBase(_Strict):
    manufacturer: str = Field(min_length=1)
    model: str = Field(min_length=1)
    description: str = ""
    asset: ProfileAsset


def _unique_names(points: list[Any]) -> None:
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ValueError("point names must be unique")


class ModbusProfile(_ProfileBase):
    """A Modbus device model (RTU or TCP: the register map is the same)."""

    protocol: Literal["modbus"]
    default_poll_interval_s: float = Field(default=10.0, gt=0, le=86400)
    max_gap_registers: int = Field(default=8, ge=0, le=124)
    forbidden: list[ForbiddenRange] = Field(default_factory=list)
    points: list[RegisterPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _plan(self) -> ModbusProfile:
        _unique_names(self.points)
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


class FieldPoint(_Strict):
    """One value a line or radio protocol's decoder gives: ``field * scale + offset``, in ``unit``."""

    name: Name
    field: str = Field(min_length=1, description="the decoder's field name")
    unit: Unit
    description: str = ""
    scale: float = 1.0
    offset: float = 0.0
    label: str = Field(default="", max_length=48, description="the point's name for people")
    precision: int | None = Field(default=None, ge=0, le=6, description="decimals shown")
    fault: bool = Field(default=False, description="a set value is a fault: it degrades the device")


def _fields_known(points: list[FieldPoint], known: frozenset[str], what: str) -> None:
    _unique_names(points)
    for p in points:
        if p.field not in known:
            raise ValueError(f"point {p.name!r}: {what} has no numeric field {p.field!r} (known: {sorted(known)})")


class PwdProfile(_ProfileBase):
    """A Vaisala PWD visibility / present-weather sensor, polled over a serial line."""

    protocol: Literal["vaisala_pwd"]
    message: Annotated[Literal[2, 7], BeforeValidator(_no_float_or_bool)] = 7
    serial: SerialSettings = SerialSettings(baudrate=9600, bytesize=7, parity="E", stopbits=1)
    default_poll_interval_s: float = Field(default=15.0, gt=0, le=86400)
    response_timeout_ms: int = Field(default=1500, gt=0, le=60_000)
    points: list[FieldPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _fields(self) -> PwdProfile:
        known = PWD_MESSAGE7_FIELDS if self.message == 7 else PWD_MESSAGE2_FIELDS
        _fields_known(self.points, known, f"message {self.message}")
        return self


class RadarProfile(_ProfileBase):
    """A TI mmWave radar streaming TLV frames on its UART data port."""

    protocol: Literal["ti_mmwave"]
    serial: SerialSettings = SerialSettings(baudrate=921600)
    report_interval_s: float = Field(default=1.0, gt=0, le=3600, description="one set of readings per interval")
    stale_after_s: float = Field(default=5.0, gt=0, le=86400)
    points: list[FieldPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _fields(self) -> RadarProfile:
        _fields_known(self.points, RADAR_FIELDS, "the radar summary")
        return self


class BthomeProfile(_ProfileBase):
    """A BTHome v2 BLE sensor (plain, or encrypted with a per-device key)."""

    protocol: Literal["bthome"]
    stale_after_s: float = Field(default=900.0, gt=0, le=86400 * 7)
    points: list[FieldPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _fields(self) -> BthomeProfile:
        _fields_known(self.points, bthome_fields(), "BTHome")
        return self


class RuuviProfile(_ProfileBase):
    """A RuuviTag sending data format 5."""

    protocol: Literal["ruuvi"]
    stale_after_s: float = Field(default=60.0, gt=0, le=86400 * 7)
    points: list[FieldPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _fields(self) -> RuuviProfile:
        _fields_known(self.points, RUUVI_FIELDS, "Ruuvi format 5")
        return self


Profile = Annotated[
    ModbusProfile | PwdProfile | RadarProfile | BthomeProfile | RuuviProfile,
    Field(discriminator="protocol"),
]
SerialProfile = PwdProfile | RadarProfile
BleProfile = BthomeProfile | RuuviProfile
PROTOCOLS = ("modbus", "vaisala_pwd", "ti_mmwave", "bthome", "ruuvi")
_PROFILE: TypeAdapter[Profile] = TypeAdapter(Profile)


DRIVERS_PATH_ENV = "EDGEAGENT_DRIVERS_PATH"
"""Colon-separated folders of a site's own profiles, searched before the shipped ones."""


def drivers_dir() -> Path:
    """Where the shipped profiles live: inside the installed package, else the source checkout."""
    packaged = Path(__file__).resolve().parent / "drivers"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "drivers"


def profile_dirs() -> list[Path]:
    """Every folder profiles are looked up in, first match wins: the site's own, then the shipped."""
    extra = [Path(p) for p in os.environ.get(DRIVERS_PATH_ENV, "").split(":") if p]
    return [*extra, drivers_dir()]


_TAG_KEYS = ("kind", "protocol")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the choice closest to a misspelt ``word`` (case aside), else ``""``."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), by_lower, n=1)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


def format_validation_error(
    file: str, exc: ValidationError, prefix: str = "", data: object = None, schema: object = None
) -> list[ConfigProblem]:
    """Turn pydantic's errors into ``file: a.b[2].c: message`` problems.

    With ``data`` (the validated input), the tag pydantic puts in the path of a
    discriminated union (``buses[0].modbus_rtu.baudrate``) is left out: the reader
    wrote ``buses[0].baudrate``. With ``schema`` (the type validated against), an unknown
    key gets the closest key of its table as a suggestion, and a secret's value is never
    repeated in a message.
    """
    problems = []
    for err in exc.errors():
        path = prefix
        node = data
        for part in err["loc"]:
            if (
                isinstance(part, str)
                and isinstance(node, dict)
                and part not in node
                and any(node.get(k) == part for k in _TAG_KEYS)
            ):
                continue
            node = _child(node, part)
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}" if path else str(part)
        message = err["msg"]
        ctx = err.get("ctx") or {}
        if err["type"] == "extra_forbidden":
            key = err["loc"][-1]
            keys = _fields_of(_type_at(schema, err["loc"][:-1]))
            message = "unknown key" + (did_you_mean(key, keys) if isinstance(key, str) else "")
        elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            key = str(ctx.get("discriminator", "kind")).strip("'")
            path += f".{key}" if path else key
            tags = _quoted(str(ctx.get("expected_tags", "")))
            # Worded like pydantic's own error for a Literal field.
            message = f"Input should be {_listed(tags)}" if err["type"] == "union_tag_invalid" else "Field required"
            if err["type"] == "union_tag_invalid" and isinstance(ctx.get("tag"), str):
                message += did_you_mean(ctx["tag"], tags)
        elif err["type"] == "literal_error" and isinstance(err["input"], str):
            message += did_you_mean(err["input"], _quoted(str(ctx.get("expected", ""))))
        elif err["type"] in _EXPECTED:
            secret = _strip(_type_at(schema, err["loc"])) is SecretStr
            message = f"expected {_EXPECTED[err['type']]}, got {_toml_value(err['input'], secret=secret)}"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        problems.append(ConfigProblem(file=file, path=path, message=message))
    return problems


# What a key of each type takes, by the pydantic error for a value of another type.
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "path_type": "a path (a string)",
    "url_type": "a URL (a string)",
}
_SHOWN_CHARS = 40


def _toml_value(value: object, *, secret: bool = False) -> str:
    """A value as it is written in TOML, and its TOML type: ``true (a boolean)``, ``"502" (a string)``."""
    if isinstance(value, bool):
        written, kind = str(value).lower(), "a boolean"
    elif isinstance(value, int):
        written, kind = str(value), "an integer"
    elif isinstance(value, float):
        written = ("-inf" if value < 0 else "inf") if math.isinf(value) else "nan" if math.isnan(value) else repr(value)
        kind = "a float"
    elif isinstance(value, str):
        shown = value if len(value) <= _SHOWN_CHARS else value[: _SHOWN_CHARS - 3] + "..."
        written, kind = json.dumps(shown, ensure_ascii=False), "a string"
    elif isinstance(value, list):
        return "an array"
    elif isinstance(value, dict):
        return "a table"
    elif isinstance(value, datetime.datetime):
        written, kind = value.isoformat(), "a date-time"
    elif isinstance(value, datetime.date):
        written, kind = value.isoformat(), "a date"
    elif isinstance(value, datetime.time):
        written, kind = value.isoformat(), "a time"
    else:
        written, kind = repr(value), f"a {type(value).__name__}"
    return kind if secret else f"{written} ({kind})"


def _quoted(listed: str) -> list[str]:
    """The choices in pydantic's ``'a', 'b' or 'c'``."""
    return re.findall(r"'([^']*)'", listed)


def _listed(choices: list[str]) -> str:
    quoted = [f"'{c}'" for c in choices] or ["''"]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else quoted[0]


def _strip(tp: object) -> object:
    """The type under ``Annotated[...]`` and ``X | None``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp):
            rest = [a for a in get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _type_at(schema: object, loc: tuple[str | int, ...]) -> object:
    """The type a pydantic error location points at inside ``schema`` (None where it cannot tell)."""
    tp = schema
    for part in loc:
        tp = _strip(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            field = tp.model_fields.get(part)
            tp = field.annotation if field is not None else None
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict and isinstance(part, str):
            tp = get_args(tp)[1]
        elif get_origin(tp) in (Union, types.UnionType) and isinstance(part, str):
            # A discriminated union: the location names the member by its tag.
            tp = next((m for m in map(_strip, get_args(tp)) if part in _tags(m)), None)
        else:
            return None
    return tp


def _tags(tp: object) -> tuple[object, ...]:
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return ()
    return tuple(v for k in _TAG_KEYS if k in tp.model_fields for v in get_args(tp.model_fields[k].annotation))


def _fields_of(tp: object) -> list[str]:
    tp = _strip(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _child(node: object, part: str | int) -> object:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def read_toml(path: Path) -> dict[str, object]:
    """Parse a TOML file, turning syntax, encoding and I/O errors into a ConfigError."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
        raise ConfigError([ConfigProblem(str(path), "", message)]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"invalid TOML: {exc}")]) from exc


def load_profile_file(path: Path) -> Profile:
    """Load and validate one profile file; every problem names this file and the key path in it."""
    data = read_toml(path)
    try:
        return _PROFILE.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc, data=data, schema=Profile)) from exc


def profile_path(name: str) -> Path:
    """The file of the profile ``name``, a site's own before a shipped one.

    A name that is no profile is a ConfigError whose one problem (no file or key path:
    the caller knows where the name was written) suggests the closest profile there is.
    """
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError([ConfigProblem("", "", f"invalid profile name {name!r}")])
    for folder in profile_dirs():
        path = folder / f"{name}.toml"
        if path.is_file():
            return path
    hint = did_you_mean(name, available_profiles()) or " (`edgeagent profiles` lists them)"
    raise ConfigError([ConfigProblem("", "", f"no such profile {name!r}{hint}")])


@cache
def load_profile(name: str) -> Profile:
    """Load a profile by name (its file name without ``.toml``), a site's own before a shipped one."""
    return load_profile_file(profile_path(name))


def available_profiles() -> list[str]:
    """Names of every profile that can be loaded (the site's own and the shipped ones)."""
    return sorted({p.stem for folder in profile_dirs() for p in folder.glob("*.toml")})
