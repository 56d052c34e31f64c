"""Bad configs are rejected with file and key path; `run` refuses them before touching the store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeagent.config import load_config
from edgeagent.errors import ConfigError
from tests.helpers import site_toml

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "config").glob("*.toml"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def _good(tmp_path: Path) -> str:
    return site_toml(state_dir=tmp_path / "state", modbus_port=5020, ingest_url="http://127.0.0.1:9/ingest")


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_are_valid(path: Path) -> None:
    load_config(path)


def test_good_config_resolves_relative_paths(tmp_path: Path) -> None:
    path = _write(tmp_path, _good(tmp_path).replace(str(tmp_path / "state"), "state"))
    assert load_config(path).gateway.state_dir == tmp_path / "state"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "poll_interval_s = 0.1",
            'poll_interval_s = "fast"',
            'devices[0].poll_interval_s: expected a number, got "fast" (a string)',
        ),
        ("poll_interval_s = 0.1", "poll_interval_s = 0", "devices[0].poll_interval_s: Input should be greater than 0"),
        ("unit_id = 1", "unit_id = 1\npoll_intreval_s = 3", "devices[0].poll_intreval_s: unknown key"),
        ('profile = "generic_water_level"', 'profile = "no_such_sensor"', "devices[0].profile: no such profile"),
        ("port = 5020", "port = 70000", "buses[0].port: Input should be less than or equal to 65535"),
        ('bus = "flood"', 'bus = "nowhere"', "devices[0].bus: no bus named 'nowhere'"),
        ('kind = "http"', 'kind = "carrier-pigeon"', "uplinks[0].kind: Input should be 'http'"),
    ],
)
def test_bad_config_names_key_path(tmp_path: Path, old: str, new: str, expected: str) -> None:
    text = _good(tmp_path)
    assert old in text
    path = _write(tmp_path, text.replace(old, new, 1))
    problems = _problems(path)
    assert any(p.startswith(f"{path}: {expected}") for p in problems), problems


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    text = _good(tmp_path).replace("port = 5020", "port = -1").replace("unit_id = 1", "unit_id = 999")
    problems = _problems(_write(tmp_path, text))
    assert any("buses[0].port" in p for p in problems)
    assert any("devices[0].unit_id" in p for p in problems)


def test_toml_syntax_error_is_reported(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, "[gateway\nid = 1"))
    assert "invalid TOML" in problems[0]


def test_duplicate_unit_id_on_a_bus(tmp_path: Path) -> None:
    text = site_toml(state_dir=tmp_path, modbus_port=1, ingest_url="http://127.0.0.1:9/", unit_ids=(1, 2)).replace(
        "unit_id = 2", "unit_id = 1"
    )
    problems = _problems(_write(tmp_path, text))
    assert any("devices[1].unit_id: unit id 1 used twice" in p for p in problems)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeagent", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_check_config_cli(tmp_path: Path) -> None:
    good = _write(tmp_path, _good(tmp_path))
    result = _cli("check-config", str(good))
    assert (result.returncode, result.stdout.strip()) == (0, "OK")
    bad = tmp_path / "bad.toml"
    bad.write_text(_good(tmp_path).replace("port = 5020", "port = 0"))
    result = _cli("check-config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: buses[0].port: Input should be greater than or equal to 1" in result.stderr


def test_run_with_bad_config_exits_before_touching_the_store(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bad = _write(tmp_path, _good(tmp_path).replace("unit_id = 1", 'unit_id = "one"'))
    result = _cli("run", "--config", str(bad))
    assert result.returncode == 2
    assert "devices[0].unit_id" in result.stderr
    assert not state.exists()


# Field buses and device addresses -------------------------------------------------------

_ASSET = {"location": "x", "owner": "y"}


def _field_site(buses: list[dict[str, object]], devices: list[dict[str, object]]) -> list[str]:
    from edgeagent.config import parse_config

    data = {
        "gateway": {"id": "gw"},
        "buses": buses,
        "devices": [{"asset": _ASSET, **d} for d in devices],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, file="site.toml")
    return [str(p) for p in info.value.problems]


RTU = {"name": "rtu", "kind": "modbus_rtu", "port": "/dev/ttyUSB0"}
SERIAL = {"name": "ser", "kind": "serial", "port": "/dev/ttyUSB1"}
BLE = {"name": "ble", "kind": "ble"}


@pytest.mark.parametrize(
    ("buses", "devices", "expected"),
    [
        (
            [RTU],
            [{"id": "a", "profile": "vaisala_pwd22", "bus": "rtu"}],
            "devices[0].bus: profile 'vaisala_pwd22' speaks vaisala_pwd; bus 'rtu' is modbus_rtu, not serial",
        ),
        ([RTU], [{"id": "a", "profile": "generic_water_level", "bus": "rtu"}], "devices[0].unit_id: required"),
        ([BLE], [{"id": "a", "profile": "ruuvitag", "bus": "ble"}], "devices[0].mac: required for a ruuvi device"),
        (
            [BLE],
            [{"id": "a", "profile": "ruuvitag", "bus": "ble", "mac": "AA:BB:CC:DD:EE:FF", "unit_id": 3}],
            "devices[0].unit_id: not used by a ruuvi device",
        ),
        (
            [BLE],
            [{"id": "a", "profile": "ruuvitag", "bus": "ble", "mac": "AA:BB:CC:DD:EE:FF", "key": "00" * 16}],
            "devices[0].key: only BTHome devices take a key",
        ),
        (
            [BLE],
            [{"id": "a", "profile": "bthome_manhole_water", "bus": "ble", "mac": "AA:BB:CC:DD:EE:FF", "key": "xyz"}],
            "devices[0].key: a BTHome key is 32 hex digits",
        ),
        (
            [BLE],
            [
                {"id": "a", "profile": "ruuvitag", "bus": "ble", "mac": "aa:bb:cc:dd:ee:ff"},
                {"id": "b", "profile": "ruuvitag", "bus": "ble", "mac": "AA:BB:CC:DD:EE:FF"},
            ],
            "devices[1].mac: MAC AA:BB:CC:DD:EE:FF used twice on bus 'ble'",
        ),
        (
            [SERIAL],
            [
                {"id": "a", "profile": "ti_mmwave_radar", "bus": "ser"},
                {"id": "b", "profile": "ti_mmwave_radar", "bus": "ser"},
            ],
            "buses[0]: a radar streams on its own port: one device only",
        ),
        (
            [SERIAL],
            [
                {"id": "a", "profile": "ti_mmwave_radar", "bus": "ser"},
                {"id": "b", "profile": "vaisala_pwd22", "bus": "ser"},
            ],
            "buses[0]: one protocol per serial port, got ti_mmwave, vaisala_pwd",
        ),
        ([{**RTU, "parity": "X"}], [], "buses[0].parity: Input should be 'N', 'E' or 'O'"),
        (
            [{"name": "x", "kind": "can"}],
            [],
            "buses[0].kind: Input should be 'modbus_tcp', 'modbus_rtu', 'serial' or 'ble'",
        ),
        ([{**BLE, "adapter": "wlan0"}], [], "buses[0].adapter: String should match pattern"),
        (
            [RTU],
            [{"id": "a", "profile": "generic_water_level", "bus": "rtu", "unit_id": 1, "stale_after_s": 5}],
            "devices[0].stale_after_s: polled devices go offline by failed polls",
        ),
    ],
)
def test_field_bus_problems_name_the_key_path(
    buses: list[dict[str, object]], devices: list[dict[str, object]], expected: str
) -> None:
    problems = _field_site(buses, devices)
    assert any(p.startswith(f"site.toml: {expected}") for p in problems), problems


def test_key_and_key_file_together_are_refused(tmp_path: Path) -> None:
    problems = _field_site(
        [BLE],
        [
            {
                "id": "a",
                "profile": "bthome_manhole_water",
                "bus": "ble",
                "mac": "AA:BB:CC:DD:EE:FF",
                "key": "00" * 16,
                "key_file": "k.key",
            }
        ],
    )
    assert any("give key or key_file, not both" in p for p in problems), problems


def test_serial_framing_comes_from_the_profile_unless_the_bus_sets_it(tmp_path: Path) -> None:
    from edgeagent.config import SerialBus, load_config, serial_settings
    from edgeagent.profiles import PwdProfile, load_profile

    path = tmp_path / "site.toml"
    path.write_text(
        """
[gateway]
id = "gw"
[[buses]]
name = "pwd"
kind = "serial"
port = "/dev/ttyUSB1"
[[buses]]
name = "pwd-test"
kind = "serial"
port = "/dev/pts/9"
bytesize = 8
parity = "N"
[[devices]]
id = "a"
profile = "vaisala_pwd22"
bus = "pwd"
[devices.asset]
location = "x"
owner = "y"
[[devices]]
id = "b"
profile = "vaisala_pwd22"
bus = "pwd-test"
sensor_id = "2"
[devices.asset]
location = "x"
owner = "y"
"""
    )
    site = load_config(path)
    profile = load_profile("vaisala_pwd22")
    assert isinstance(profile, PwdProfile)
    production, test = site.buses
    assert isinstance(production, SerialBus) and isinstance(test, SerialBus)
    assert serial_settings(production, profile).model_dump() == {
        "baudrate": 9600,
        "bytesize": 7,
        "parity": "E",
        "stopbits": 1,
    }
    assert (serial_settings(test, profile).bytesize, serial_settings(test, profile).parity) == (8, "N")


def test_key_file_is_relative_to_the_config(tmp_path: Path) -> None:
    from edgeagent.config import load_config

    path = tmp_path / "site.toml"
    path.write_text(
        """
[gateway]
id = "gw"
[[buses]]
name = "ble"
kind = "ble"
[[devices]]
id = "mh"
profile = "bthome_manhole_water"
bus = "ble"
mac = "54:48:e6:8f:80:a5"
key_file = "keys/mh.key"
[devices.asset]
location = "x"
owner = "y"
"""
    )
    (device,) = load_config(path).devices
    assert device.key_file == tmp_path / "keys" / "mh.key"
    assert device.mac == "54:48:E6:8F:80:A5"


def test_unreadable_token_file_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    text = _good(tmp_path).replace('kind = "http"', f'kind = "http"\ntoken_file = "{tmp_path / "missing.token"}"')
    result = _cli("run", "--config", str(_write(tmp_path, text)))
    assert result.returncode == 2, result.stderr
    assert "uplinks[0].token_file: cannot read token file" in result.stderr
    assert "No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_class_budget_takes_its_documented_defaults_for_the_keys_not_given(tmp_path: Path) -> None:
    text = _good(tmp_path) + "[store.event]\nmax_bytes = 1048576\n[store.alarm]\npolicy = 'drop_oldest'\n"
    store = load_config(_write(tmp_path, text)).store
    assert (store.event.max_bytes, store.event.policy) == (1024 * 1024, "drop_oldest")
    assert (store.alarm.max_bytes, store.alarm.policy) == (16 * 1024 * 1024, "drop_oldest")
    assert (store.telemetry.max_bytes, store.telemetry.policy) == (256 * 1024 * 1024, "drop_oldest")
    reject = load_config(_write(tmp_path, _good(tmp_path) + "[store.alarm]\nmax_bytes = 1048576\n")).store.alarm
    assert (reject.max_bytes, reject.policy) == (1024 * 1024, "reject_new")


def test_parts_of_a_config_know_their_key_path(tmp_path: Path) -> None:
    text = _good(tmp_path) + '[[uplinks]]\nname = "second"\nkind = "http"\nurl = "http://127.0.0.1:9/"\n'
    path = _write(tmp_path, text)
    site = load_config(path)
    assert str(site.uplinks[1].problem("token_file", "x")) == f"{path}: uplinks[1].token_file: x"
    assert str(site.devices[0].problem("key_file", "x")) == f"{path}: devices[0].key_file: x"
    assert str(site.problem("web.port", "x")) == f"{path}: web.port: x"
