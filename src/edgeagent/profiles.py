"""Device profiles: declarative descriptions of a sensor model, one TOML file each.

A profile says what a model's values mean (for Modbus: address, data type, word order,
scale, unit; for a line or radio protocol: which decoded field, in which unit) so that
adding a sensor model whose protocol is already known is a new file in ``drivers/``, not
new Python. Every profile names its ``protocol``, which selects its schema. Profiles
ship inside the wheel as ``edgeagent/drivers``; in a source checkout they are read from
the repository's ``drivers/`` folder.
"""

from __future__ import annotations

import os
import tomllib
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

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
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProfileAsset(_Strict):
    """What every device of this model is, as an asset: shown on the status page."""

    category: str = Field(min_length=1, description="e.g. waterlogging sensor, visibility sensor, lamp controller")
    spec: str = Field(default="", description="measuring range, accuracy, protection class")
    datasheet: str = Field(default="", description="the manual the profile was written from")


class SerialSettings(_Strict):
    """A serial line's framing; a profile's factory defaults, which a bus may override."""

    baudrate: int = Field(ge=50, le=4_000_000)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1


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
    type: DataType | Literal["bool"] = "int16"
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


def _fields_known(points: list[FieldPoint], known: frozenset[str], what: str) -> None:
    _unique_names(points)
    for p in points:
        if p.field not in known:
            raise ValueError(f"point {p.name!r}: {what} has no numeric field {p.field!r} (known: {sorted(known)})")


class PwdProfile(_ProfileBase):
    """A Vaisala PWD visibility / present-weather sensor, polled over a serial line."""

    protocol: Literal["vaisala_pwd"]
    message: Literal[2, 7] = 7
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


def format_validation_error(
    file: str, exc: ValidationError, prefix: str = "", data: object = None
) -> list[ConfigProblem]:
    """Turn pydantic's errors into ``file: a.b[2].c: message`` problems.

    With ``data`` (the validated input), the tag pydantic puts in the path of a
    discriminated union (``buses[0].modbus_rtu.baudrate``) is left out: the reader
    wrote ``buses[0].baudrate``.
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
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            ctx = err.get("ctx") or {}
            key = str(ctx.get("discriminator", "kind")).strip("'")
            path += f".{key}" if path else key
            tags = str(ctx.get("expected_tags", "")).split(", ")
            # Worded like pydantic's own error for a Literal field.
            listed = f"{', '.join(tags[:-1])} or {tags[-1]}" if len(tags) > 1 else tags[0]
            message = f"Input should be {listed}" if err["type"] == "union_tag_invalid" else "Field required"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        problems.append(ConfigProblem(file=file, path=path, message=message))
    return problems


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
    """Load and validate one profile file."""
    data = read_toml(path)
    try:
        return _PROFILE.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc, data=data)) from exc


@cache
def load_profile(name: str) -> Profile:
    """Load a profile by name (its file name without ``.toml``), a site's own before a shipped one."""
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError([ConfigProblem("", "", f"invalid profile name {name!r}")])
    for folder in profile_dirs():
        path = folder / f"{name}.toml"
        if path.is_file():
            return load_profile_file(path)
    raise ConfigError([ConfigProblem(str(drivers_dir() / f"{name}.toml"), "", f"no such profile {name!r}")])


def available_profiles() -> list[str]:
    """Names of every profile that can be loaded (the site's own and the shipped ones)."""
    return sorted({p.stem for folder in profile_dirs() for p in folder.glob("*.toml")})
