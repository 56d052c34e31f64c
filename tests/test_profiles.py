"""Every shipped profile validates, and the water-level profile means what its manual says."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from edgeagent.config import parse_config
from edgeagent.devices import ModbusDevice
from edgeagent.errors import ConfigError, DecodeError
from edgeagent.profiles import (
    DRIVERS_PATH_ENV,
    PWD_MESSAGE7_FIELDS,
    ModbusProfile,
    PwdProfile,
    available_profiles,
    drivers_dir,
    load_profile,
    load_profile_file,
)
from edgeagent.protocols.vaisala_pwd import PwdMessage7

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


# Every protocol's profiles -------------------------------------------------------------


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_profile_is_a_complete_asset_description(path: Path) -> None:
    profile = load_profile_file(path)
    assert profile.asset.category, "asset fields: what kind of device this is"
    assert profile.protocol in ("modbus", "vaisala_pwd", "ti_mmwave", "bthome", "ruuvi")
    names = [p.name for p in profile.points]
    assert len(names) == len(set(names))
    if isinstance(profile, ModbusProfile):
        # Every point is read by the planned requests, none of which touches a forbidden range.
        device = ModbusDevice(_device().cfg.model_copy(update={"profile": path.stem}), profile)
        for span in device.spans:
            for f in profile.forbidden:
                assert not (span.function == f.function and span.start <= f.last and f.first < span.end)


def test_roadside_driver_set_is_shipped() -> None:
    assert {
        "generic_water_level",
        "urm13_ultrasonic",
        "generic_visibility_modbus",
        "vaisala_pwd22",
        "ti_mmwave_radar",
        "smart_lamp_controller",
        "bthome_manhole_water",
        "ruuvitag",
    } <= set(available_profiles())
    pwd = load_profile("vaisala_pwd22")
    assert isinstance(pwd, PwdProfile)
    assert (pwd.serial.bytesize, pwd.serial.parity, pwd.serial.baudrate) == (7, "E", 9600)


def test_pwd_profile_fields_are_the_decoders_numeric_fields() -> None:
    hints = typing.get_type_hints(PwdMessage7)
    numeric = {name for name, tp in hints.items() if set(typing.get_args(tp)) & {int, float} and name != "missing"}
    assert numeric == set(PWD_MESSAGE7_FIELDS)


def _bad(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_profile_file(path)
    return [str(p) for p in info.value.problems]


HEAD = 'manufacturer = "X"\nmodel = "Y"\nasset = { category = "test" }\n'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            'protocol = "modbus"\n[[points]]\nname = "a"\naddress = 0\ntype = "int16"\nbit = 3\nunit = "flag"',
            "points[0]: a bit field needs an unsigned type",
        ),
        (
            'protocol = "modbus"\n[[points]]\nname = "a"\naddress = 0\ntype = "uint16"\nbit = 12\nbits = 8\nunit = "x"',
            "do not fit uint16",
        ),
        (
            'protocol = "modbus"\n[[points]]\nname = "a"\nfunction = "input"\naddress = 0\nunit = "V"\nwritable = true',
            "only holding registers and coils can be written",
        ),
        (
            'protocol = "modbus"\n[[points]]\nname = "a"\nfunction = "coil"\naddress = 0\nscale = 2.0\nunit = "flag"',
            "a coil or discrete input has no bit field, scale",
        ),
        ('protocol = "vaisala_pwd"\n[[points]]\nname = "a"\nfield = "colour"\nunit = "m"', "has no numeric field"),
        ('protocol = "ti_mmwave"\n[[points]]\nname = "a"\nfield = "range"\nunit = "m"\nfoo = 1', "points[0].foo"),
        ('protocol = "carrier_pigeon"', "bad.toml: protocol: Input should be 'modbus', 'vaisala_pwd'"),
        (
            'protocol = "modbus"\n[[points]]\nname = "a"\naddress = 0\nunit = "mm"\n'
            '[[points]]\nname = "a"\naddress = 1\nunit = "mm"',
            "point names must be unique",
        ),
        (
            'protocol = "modbus"\n[[forbidden]]\nfirst = 2\nlast = 2\n'
            '[[points]]\nname = "a"\naddress = 1\ntype = "uint32"\nunit = "mm"',
            "holding 1..2 lies in a forbidden range",
        ),
        (
            'protocol = "modbus"\n[[points]]\nname = "a"\naddress = 0\nunit = "%"\n'
            "writable = true\nwrite_min = 10\nwrite_max = 5",
            "points[0]: write_max must be >= write_min",
        ),
        (
            'protocol = "modbus"\n[[points]]\nname = "a"\naddress = 0\nunit = "mm"\nunit_codes = { "1" = "mm" }',
            "points[0]: unit_register and unit_codes go together",
        ),
    ],
)
def test_bad_profiles_name_the_key_path(tmp_path: Path, body: str, expected: str) -> None:
    problems = _bad(tmp_path, HEAD + body)
    assert any(expected in p for p in problems), problems
    # A discriminated union's tag never shows in the path the reader sees.
    assert not any(".modbus." in p or ".vaisala_pwd." in p or ".ti_mmwave." in p for p in problems)


def test_a_profile_needs_asset_fields(tmp_path: Path) -> None:
    problems = _bad(
        tmp_path,
        'manufacturer = "X"\nmodel = "Y"\nprotocol = "ruuvi"\n'
        '[[points]]\nname = "t"\nfield = "temperature_c"\nunit = "Cel"',
    )
    assert any(p.endswith("asset: Field required") for p in problems), problems


def test_a_sites_own_profiles_are_found_besides_the_shipped_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = (drivers_dir() / "generic_water_level.toml").read_text()
    (tmp_path / "site_own_level.toml").write_text(shipped.replace("RS-485 water-level transmitter", "Site copy"))
    monkeypatch.setenv(DRIVERS_PATH_ENV, str(tmp_path))
    assert load_profile("site_own_level").model == "Site copy"
    assert {"site_own_level", "generic_water_level"} <= set(available_profiles())
