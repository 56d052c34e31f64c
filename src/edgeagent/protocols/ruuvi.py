"""RuuviTag data format 5 ("RAWv2") BLE manufacturer data.

Spec facts used (Ruuvi sensor protocols, data format 5):

- Manufacturer id 0x0499 (bleak gives the bytes after it); 24 bytes, big-endian.
- Byte 0 is the format, 5. Then: temperature int16 in 0.005 °C; humidity uint16 in
  0.0025 %; pressure uint16 in Pa offset by +50000; acceleration x, y, z int16 in
  mG; power info uint16 = battery voltage above 1600 mV (top 11 bits, mV) and TX
  power above -40 dBm in 2 dBm steps (low 5 bits); movement counter uint8;
  measurement sequence uint16; MAC, 6 bytes.
- "Not available" markers: 0x8000 for the signed fields, all ones for the unsigned
  ones (0xFFFF, 0xFF, 11 and 5 one-bits of the power info, FF:FF:FF:FF:FF:FF).
  A marker decodes to ``None`` (listed in ``missing``), never to a number.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields

from edgeagent.errors import DecodeError

MANUFACTURER_ID = 0x0499
DATA_FORMAT = 5
PAYLOAD_BYTES = 24

_LAYOUT = struct.Struct(">BhHHhhhHBH6s")
_INVALID_SIGNED = -0x8000
_INVALID_U16 = 0xFFFF
_INVALID_U8 = 0xFF
_INVALID_BATTERY = 0x7FF
_INVALID_TX_POWER = 0x1F
_INVALID_MAC = b"\xff" * 6
_BATTERY_OFFSET_MV = 1600
_TX_POWER_OFFSET_DBM = -40
_PRESSURE_OFFSET_PA = 50000


@dataclass(frozen=True, slots=True, kw_only=True)
class RuuviDf5:
    """One data format 5 reading; ``missing`` names the fields sent as "not available"."""

    temperature_c: float | None
    humidity_pct: float | None
    pressure_pa: int | None
    acceleration_x_mg: int | None
    acceleration_y_mg: int | None
    acceleration_z_mg: int | None
    battery_mv: int | None
    tx_power_dbm: int | None
    movement_counter: int | None
    sequence: int | None
    mac: str | None
    missing: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        # Derived, so the quality flag cannot disagree with the values.
        absent = frozenset(f.name for f in fields(self) if f.init and getattr(self, f.name) is None)
        object.__setattr__(self, "missing", absent)


NUMERIC_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(RuuviDf5) if f.init and f.name != "mac")
"""The measured fields of a reading, the ones a profile point can report."""


def decode(data: bytes) -> RuuviDf5:
    """Decode the manufacturer data of id 0x0499 (without the id itself)."""
    raw = bytes(data)
    if len(raw) != PAYLOAD_BYTES:
        raise DecodeError(f"Ruuvi format 5 is {PAYLOAD_BYTES} bytes, got {len(raw)}")
    (
        data_format,
        temperature,
        humidity,
        pressure,
        accel_x,
        accel_y,
        accel_z,
        power,
        movement,
        sequence,
        mac,
    ) = _LAYOUT.unpack(raw)
    if data_format != DATA_FORMAT:
        raise DecodeError(f"Ruuvi data format {data_format}, expected {DATA_FORMAT}")
    battery, tx_power = power >> 5, power & 0x1F
    return RuuviDf5(
        temperature_c=None if temperature == _INVALID_SIGNED else temperature / 200,
        humidity_pct=None if humidity == _INVALID_U16 else humidity / 400,
        pressure_pa=None if pressure == _INVALID_U16 else pressure + _PRESSURE_OFFSET_PA,
        acceleration_x_mg=None if accel_x == _INVALID_SIGNED else accel_x,
        acceleration_y_mg=None if accel_y == _INVALID_SIGNED else accel_y,
        acceleration_z_mg=None if accel_z == _INVALID_SIGNED else accel_z,
        battery_mv=None if battery == _INVALID_BATTERY else battery + _BATTERY_OFFSET_MV,
        tx_power_dbm=(None if tx_power == _INVALID_TX_POWER else _TX_POWER_OFFSET_DBM + 2 * tx_power),
        movement_counter=None if movement == _INVALID_U8 else movement,
        sequence=None if sequence == _INVALID_U16 else sequence,
        mac=None if mac == _INVALID_MAC else ":".join(f"{b:02X}" for b in mac),
    )


def encode(reading: RuuviDf5) -> bytes:
    """Build the 24 bytes a tag would send (for simulators); ``None`` becomes the marker."""
    return _LAYOUT.pack(
        DATA_FORMAT,
        _field(reading.temperature_c, 200, -0x7FFF, 0x7FFF, _INVALID_SIGNED, "temperature_c"),
        _field(reading.humidity_pct, 400, 0, 0xFFFE, _INVALID_U16, "humidity_pct"),
        _offset_field(reading.pressure_pa, _PRESSURE_OFFSET_PA, 0xFFFE, "pressure_pa"),
        _field(reading.acceleration_x_mg, 1, -0x7FFF, 0x7FFF, _INVALID_SIGNED, "acceleration"),
        _field(reading.acceleration_y_mg, 1, -0x7FFF, 0x7FFF, _INVALID_SIGNED, "acceleration"),
        _field(reading.acceleration_z_mg, 1, -0x7FFF, 0x7FFF, _INVALID_SIGNED, "acceleration"),
        _power_info(reading.battery_mv, reading.tx_power_dbm),
        _field(reading.movement_counter, 1, 0, 0xFE, _INVALID_U8, "movement_counter"),
        _field(reading.sequence, 1, 0, 0xFFFE, _INVALID_U16, "sequence"),
        _INVALID_MAC if reading.mac is None else _mac_bytes(reading.mac),
    )


def _field(value: float | None, scale: int, lowest: int, highest: int, invalid: int, name: str) -> int:
    if value is None:
        return invalid
    raw = round(value * scale)
    if not lowest <= raw <= highest:
        raise ValueError(f"{name} {value!r} is outside what format 5 can carry")
    return raw


def _offset_field(value: int | None, offset: int, highest: int, name: str) -> int:
    return _field(None if value is None else value - offset, 1, 0, highest, _INVALID_U16, name)


def _power_info(battery_mv: int | None, tx_power_dbm: int | None) -> int:
    if battery_mv is None:
        battery = _INVALID_BATTERY
    else:
        battery = _field(battery_mv - _BATTERY_OFFSET_MV, 1, 0, 0x7FE, 0, "battery_mv")
    if tx_power_dbm is None:
        tx_power = _INVALID_TX_POWER
    else:
        if tx_power_dbm % 2:
            raise ValueError(f"tx_power_dbm comes in 2 dBm steps, got {tx_power_dbm}")
        tx_power = _field((tx_power_dbm - _TX_POWER_OFFSET_DBM) // 2, 1, 0, 0x1E, 0, "tx_power")
    return battery << 5 | tx_power


def _mac_bytes(mac: str) -> bytes:
    try:
        raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw
