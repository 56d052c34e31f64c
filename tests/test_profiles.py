"""Every shipped profile validates, and the water-level profile means what its manual says."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeagent.config import parse_config
from edgeagent.devices import ModbusDevice
from edgeagent.errors import DecodeError
from edgeagent.profiles import available_profiles, drivers_dir, load_profile, load_profile_file

PROFILE_FILES = sorted(drivers_dir().glob("*.toml"))


def test_profiles_are_shipped() -> None:
    assert "generic_water_level" in available_profiles()


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_profile_is_valid(path: Path) -> None:
    profile = load_profile_file(path)
    assert profile.manufacturer and profile.model
    for point in profile.points:
        assert point.unit


def _device() -> ModbusDevice:
    site = parse_config(
        {
            "gateway": {"id": "gw"},
            "buses": [{"name": "b", "kind": "modbus_tcp", "host": "127.0.0.1"}],
            "devices": [
                {
                    "id": "wl",
                    "profile": "generic_water_level",
                    "bus": "b",
                    "unit_id": 1,
                    "asset": {"location": "here", "owner": "us"},
                }
            ],
        }
    )
    return ModbusDevice(site.devices[0], load_profile("generic_water_level"))


def test_water_level_is_one_request_avoiding_reserved_register() -> None:
    device = _device()
    assert [(s.function, s.start, s.count) for s in device.spans] == [("holding", 3, 4)]


@pytest.mark.parametrize(
    ("unit_code", "decimals", "raw", "expected_mm"),
    [(2, 1, 1234, 123.4), (1, 2, 1234, 123.4), (3, 3, 1234, 1234.0), (2, 0, 0xFFF6, -10.0)],
)
def test_water_level_scaling_and_units(unit_code: int, decimals: int, raw: int, expected_mm: float) -> None:
    device = _device()
    span = device.spans[0]
    (reading,) = device.decode([(span, [unit_code, decimals, 0, raw])], ts=1.0)
    assert reading.point == "water_level"
    assert reading.unit == "mm"
    assert reading.value == pytest.approx(expected_mm)


def test_unknown_unit_code_is_a_decode_error() -> None:
    device = _device()
    with pytest.raises(DecodeError, match="unknown unit code 9"):
        device.decode([(device.spans[0], [9, 1, 0, 10])], ts=1.0)


def test_implausible_decimals_is_a_decode_error() -> None:
    device = _device()
    with pytest.raises(DecodeError, match="decimals"):
        device.decode([(device.spans[0], [2, 40, 0, 10])], ts=1.0)
