"""What a config or profile error says: the wrong type and what was written, the closest name, a profile once.

tests/test_config_agree.py checks that check-config and run print these, word for word;
here, in process, are the cases that need no second process: every kind of key, the
secrets that must not be repeated, and a profile broken in fifty places used by five devices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgeagent.config import parse_config
from edgeagent.errors import ConfigError
from edgeagent.profiles import DRIVERS_PATH_ENV, did_you_mean, drivers_dir, load_profile_file

ASSET = {"location": "x", "owner": "y"}
TCP = {"name": "flood", "kind": "modbus_tcp", "host": "127.0.0.1"}
RTU = {"name": "rtu", "kind": "modbus_rtu", "port": "/dev/ttyUSB0"}
LEVEL = {"id": "wl-1", "profile": "generic_water_level", "bus": "flood", "unit_id": 1, "asset": ASSET}


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({"gateway": {"id": "gw"}, **data}, file="site.toml")
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"devices": [{**LEVEL, "unit_id": True}], "buses": [TCP]},
            "devices[0].unit_id: expected an integer, got true (a boolean)",
        ),
        ({"buses": [{**TCP, "port": "502"}]}, 'buses[0].port: expected an integer, got "502" (a string)'),
        ({"buses": [{**TCP, "timeout_ms": 1500.0}]}, "buses[0].timeout_ms: expected an integer, got 1500.0 (a float)"),
        ({"buses": [{**RTU, "bytesize": 8.0}]}, "buses[0].bytesize: expected an integer, got 8.0 (a float)"),
        ({"buses": [{**RTU, "stopbits": True}]}, "buses[0].stopbits: expected an integer, got true (a boolean)"),
        ({"buses": [{**RTU, "parity": "e"}]}, "buses[0].parity: Input should be 'N', 'E' or 'O'; did you mean 'E'?"),
        ({"web": {"enabled": 1}}, "web.enabled: expected true or false, got 1 (an integer)"),
        ({"web": {"request_timeout_s": "10"}}, 'web.request_timeout_s: expected a number, got "10" (a string)'),
        ({"web": {"host": ["127.0.0.1"]}}, "web.host: expected a string, got an array"),
        ({"store": {"alarm": 5}}, "store.alarm: expected a table, got 5 (an integer)"),
        (
            {"store": {"event": {"max_bytes": 1e6}}},
            "store.event.max_bytes: expected an integer, got 1000000.0 (a float)",
        ),
        ({"devices": {"id": "x"}}, "devices: expected an array, got a table"),
        (
            {"gateway": {"id": "gw", "state_dir": 5}},
            "gateway.state_dir: expected a path (a string), got 5 (an integer)",
        ),
        (
            {"uplinks": [{"name": "u", "kind": "mqtt", "host": "h", "tls": "false"}]},
            'uplinks[0].tls: expected true or false, got "false" (a string)',
        ),
        (
            {"uplinks": [{"name": "u", "kind": "http", "url": "http://h/", "timeout_s": float("inf")}]},
            "uplinks[0].timeout_s: Input should be less than or equal to 600",
        ),
        (
            {"buses": [TCP], "devices": [{**LEVEL, "asset": {**ASSET, "location": "x" * 100}, "id": 7}]},
            "devices[0].id: expected a string, got 7 (an integer)",
        ),
        (
            {"buses": [TCP], "devices": [{**LEVEL, "asset": {**ASSET, "latitude": "52.1"}}]},
            'devices[0].asset.latitude: expected a number, got "52.1" (a string)',
        ),
        (
            {"buses": [TCP], "devices": [{**LEVEL, "tags": ["a", 2]}]},
            "devices[0].tags[1]: expected a string, got 2 (an integer)",
        ),
    ],
)
def test_a_value_of_the_wrong_type_is_named_with_what_was_written(data: dict[str, Any], expected: str) -> None:
    problems = _problems(data)
    assert f"site.toml: {expected}" in problems, problems


def test_a_long_string_is_shortened_in_the_message() -> None:
    (problem,) = _problems({"buses": [{**TCP, "port": "5" * 100}]})
    assert problem == f'site.toml: buses[0].port: expected an integer, got "{"5" * 37}..." (a string)'


def test_an_integer_is_taken_where_a_float_is_expected() -> None:
    site = parse_config(
        {
            "gateway": {"id": "gw"},
            "buses": [{**TCP, "inter_frame_ms": 5}],
            "devices": [{**LEVEL, "poll_interval_s": 10, "asset": {**ASSET, "latitude": 52}}],
        }
    )
    device = site.devices[0]
    assert (device.poll_interval_s, device.asset.latitude) == (10.0, 52.0)
    assert isinstance(device.poll_interval_s, float)


def test_a_key_of_the_wrong_type_is_not_repeated_in_the_message() -> None:
    secret = 12345678901234567890123456789012
    ble = {"name": "ble", "kind": "ble"}
    device = {"id": "mh", "profile": "bthome_manhole_water", "bus": "ble", "mac": "AA:BB:CC:DD:EE:FF", "asset": ASSET}
    problems = _problems({"buses": [ble], "devices": [{**device, "key": secret}]})
    assert problems == ["site.toml: devices[0].key: expected a string, got an integer"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"buses": [{**TCP, "tiemout_ms": 5}]}, "buses[0].tiemout_ms: unknown key; did you mean 'timeout_ms'?"),
        ({"buses": [{**RTU, "baud_rate": 9600}]}, "buses[0].baud_rate: unknown key; did you mean 'baudrate'?"),
        ({"Web": {}}, "Web: unknown key; did you mean 'web'?"),
        ({"buses": [{**TCP, "colour": "red"}]}, "buses[0].colour: unknown key"),
        (
            {"uplinks": [{"name": "u", "kind": "mqtt", "host": "h", "passwrd_file": "p"}]},
            "uplinks[0].passwrd_file: unknown key; did you mean 'password_file'?",
        ),
        (
            {"buses": [TCP], "devices": [{**LEVEL, "bus": "Flood"}]},
            "devices[0].bus: no bus named 'Flood'; did you mean 'flood'?",
        ),
        ({"devices": [LEVEL]}, "devices[0].bus: no bus named 'flood' (there are no [[buses]])"),
        (
            {"buses": [TCP], "devices": [{**LEVEL, "profile": "generic_water_levle"}]},
            "devices[0].profile: no such profile 'generic_water_levle'; did you mean 'generic_water_level'?",
        ),
        (
            {"uplinks": [{"name": "u", "kind": "https"}]},
            "uplinks[0].kind: Input should be 'http' or 'mqtt'; did you mean 'http'?",
        ),
    ],
)
def test_a_misspelling_gets_the_closest_name(data: dict[str, Any], expected: str) -> None:
    problems = _problems(data)
    assert f"site.toml: {expected}" in problems, problems


def test_no_suggestion_without_a_close_name() -> None:
    assert did_you_mean("colour", ["timeout_ms", "port"]) == ""
    assert did_you_mean("PORT", ["timeout_ms", "port"]) == "; did you mean 'port'?"


def test_duplicates_name_both_positions() -> None:
    problems = _problems(
        {
            "buses": [TCP, {**TCP, "host": "192.0.2.1"}],
            "devices": [LEVEL, {**LEVEL, "unit_id": 2}, {**LEVEL, "id": "wl-3", "unit_id": 3}, {**LEVEL, "unit_id": 4}],
            "uplinks": [{"name": "u", "kind": "http", "url": "http://h/"}] * 2,
        }
    )
    assert problems == [
        "site.toml: buses[1].name: duplicate of buses[0].name",
        "site.toml: devices[1].id: duplicate of devices[0].id",
        "site.toml: devices[3].id: duplicate of devices[0].id",
        "site.toml: uplinks[1].name: duplicate of uplinks[0].name",
    ]


def test_an_address_used_twice_names_the_first_use() -> None:
    problems = _problems({"buses": [TCP], "devices": [LEVEL, {**LEVEL, "id": "wl-2"}, {**LEVEL, "id": "wl-3"}]})
    assert problems == [
        "site.toml: devices[1].unit_id: unit id 1 used twice on bus 'flood' (first at devices[0].unit_id)",
        "site.toml: devices[2].unit_id: unit id 1 used twice on bus 'flood' (first at devices[0].unit_id)",
    ]


# Profiles --------------------------------------------------------------------------------


def test_a_profile_broken_in_fifty_places_is_named_once_whatever_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = 'manufacturer = "X"\nmodel = "Y"\nprotocol = "modbus"\n[asset]\ncategory = "test"\n'
    points = "".join(f'[[points]]\nname = "p{i}"\naddress = {i}\n' for i in range(50))  # no unit
    profile = tmp_path / "fifty.toml"
    profile.write_text(head + points)
    monkeypatch.setenv(DRIVERS_PATH_ENV, str(tmp_path))
    devices = [{**LEVEL, "id": f"d{u}", "unit_id": u, "profile": "fifty"} for u in range(1, 6)]
    problems = _problems({"buses": [TCP], "devices": devices})
    assert problems == [
        *[f"site.toml: devices[{i}].profile: profile 'fifty' is invalid (see {profile})" for i in range(5)],
        *[f"{profile}: points[{i}].unit: Field required" for i in range(50)],
    ]


def _profile_problems(tmp_path: Path, changes: dict[str, str], source: str = "generic_water_level") -> list[str]:
    text = (drivers_dir() / f"{source}.toml").read_text()
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_profile_file(path)
    return [str(p).removeprefix(f"{path}: ") for p in info.value.problems]


@pytest.mark.parametrize(
    ("source", "changes", "expected"),
    [
        (
            "generic_water_level",
            {"address = 0x0006": "address = 6.0"},
            "points[0].address: expected an integer, got 6.0 (a float)",
        ),
        (
            "generic_water_level",
            {'type = "int16"': 'type = "int61"'},
            "points[0].type: Input should be 'int16', 'uint16', "
            "'int32', 'uint32', 'float32' or 'bool'; did you mean 'int16'?",
        ),
        (
            "generic_water_level",
            {"max_gap_registers = 4": "max_gap_register = 4"},
            "max_gap_register: unknown key; did you mean 'max_gap_registers'?",
        ),
        ("generic_water_level", {'unit = "mm"': 'units = "mm"'}, "points[0].units: unknown key; did you mean 'unit'?"),
        (
            "vaisala_pwd22",
            {"bytesize = 7": "bytesize = 7.0"},
            "serial.bytesize: expected an integer, got 7.0 (a float)",
        ),
        ("vaisala_pwd22", {"message = 7": "message = true"}, "message: expected an integer, got true (a boolean)"),
    ],
)
def test_a_profile_error_names_the_key_path_in_the_profile(
    tmp_path: Path, source: str, changes: dict[str, str], expected: str
) -> None:
    problems = _profile_problems(tmp_path, changes, source)
    assert expected in problems, problems
