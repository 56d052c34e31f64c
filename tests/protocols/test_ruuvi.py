"""RuuviTag data format 5: the spec's valid, maximum, minimum and invalid vectors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from edgeagent.errors import DecodeError
from edgeagent.protocols.ruuvi import MANUFACTURER_ID, RuuviDf5, decode, encode

VECTORS = json.loads((Path(__file__).parent / "vectors" / "ruuvi_df5.json").read_text())

MAXIMUM = bytes.fromhex("057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F")
MINIMUM = bytes.fromhex("058001000000008001800180010000000000CBB8334C884F")
NOT_AVAILABLE = bytes.fromhex("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF")


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda case: case["manufacturer_data_hex"])
def test_vectors(case: dict[str, Any]) -> None:
    assert VECTORS["manufacturer_id"] == MANUFACTURER_ID
    reading = decode(bytes.fromhex(case["manufacturer_data_hex"]))
    expect = dict(case["expect"])
    assert [
        reading.acceleration_x_mg,
        reading.acceleration_y_mg,
        reading.acceleration_z_mg,
    ] == expect.pop("acceleration_mg")
    for name, value in expect.items():
        assert getattr(reading, name) == pytest.approx(value), name
    assert reading.missing == frozenset()


def test_valid_vector_literal() -> None:
    reading = decode(bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"))
    assert reading == RuuviDf5(
        temperature_c=24.3,
        humidity_pct=53.49,
        pressure_pa=100044,
        acceleration_x_mg=4,
        acceleration_y_mg=-4,
        acceleration_z_mg=1036,
        battery_mv=2977,
        tx_power_dbm=4,
        movement_counter=66,
        sequence=205,
        mac="CB:B8:33:4C:88:4F",
    )


def test_maximum_values() -> None:
    reading = decode(MAXIMUM)
    assert reading.temperature_c == 163.835
    assert reading.humidity_pct == 163.835
    assert reading.pressure_pa == 115534
    assert (reading.acceleration_x_mg, reading.acceleration_z_mg) == (32767, 32767)
    assert (reading.battery_mv, reading.tx_power_dbm) == (3646, 20)
    assert (reading.movement_counter, reading.sequence) == (254, 65534)
    assert reading.missing == frozenset()


def test_minimum_values() -> None:
    reading = decode(MINIMUM)
    assert reading.temperature_c == -163.835
    assert reading.humidity_pct == 0.0
    assert reading.pressure_pa == 50000
    assert reading.acceleration_y_mg == -32767
    assert (reading.battery_mv, reading.tx_power_dbm) == (1600, -40)
    assert (reading.movement_counter, reading.sequence) == (0, 0)


def test_not_available_markers_become_none_and_are_flagged() -> None:
    reading = decode(NOT_AVAILABLE)
    names = {f.name for f in dataclasses.fields(reading) if f.init}
    assert reading.missing == names
    assert all(getattr(reading, name) is None for name in names)


def test_one_marker_flags_only_its_field() -> None:
    data = bytearray(bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"))
    data[3:5] = b"\xff\xff"  # humidity not available
    data[13:15] = (0x7FF << 5 | 22).to_bytes(2, "big")  # battery not available
    reading = decode(bytes(data))
    assert reading.missing == {"humidity_pct", "battery_mv"}
    assert reading.tx_power_dbm == 4
    assert reading.temperature_c == 24.3


@pytest.mark.parametrize("data", [MAXIMUM, MINIMUM, NOT_AVAILABLE])
def test_encode_round_trips_the_spec_vectors(data: bytes) -> None:
    assert encode(decode(data)) == data


@pytest.mark.parametrize(
    "data",
    [b"", MAXIMUM[:23], MAXIMUM + b"\x00", b"\x03" + MAXIMUM[1:], b"\x06" + MAXIMUM[1:]],
)
def test_wrong_length_or_format_raises_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


@pytest.mark.parametrize(
    "change",
    [
        {"temperature_c": 200.0},
        {"humidity_pct": -1.0},
        {"pressure_pa": 40000},
        {"acceleration_x_mg": -32768},
        {"battery_mv": 1599},
        {"tx_power_dbm": 3},
        {"tx_power_dbm": 22},
        {"movement_counter": 255},
        {"mac": "CB:B8:33"},
    ],
)
def test_encode_refuses_values_format_5_cannot_carry(change: dict[str, Any]) -> None:
    reading = dataclasses.replace(decode(MAXIMUM), **change)
    with pytest.raises(ValueError):
        encode(reading)
