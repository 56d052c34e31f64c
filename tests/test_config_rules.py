"""Every rule a site config must follow is enforced, in every section, with the key path of what broke it.

A rule that is not enforced is a setting silently lost or a gateway that fails at 3 a.m.:
an unknown key in any table, two settings that must agree, a name used twice, an address
a device needs, a path relative to the config's folder, a budget that keeps alarms.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from edgeagent.config import DEFAULT_BUDGETS, MIB, parse_config
from edgeagent.errors import ConfigError

ASSET = {"location": "x", "owner": "y"}
TCP = {"name": "flood", "kind": "modbus_tcp", "host": "127.0.0.1"}
LEVEL = {"id": "wl-1", "profile": "generic_water_level", "bus": "flood", "unit_id": 1, "asset": ASSET}
HTTP = {"name": "platform", "kind": "http", "url": "https://ingest.example.org/v1"}
MQTT = {"name": "broker", "kind": "mqtt", "host": "broker.example.org"}


def site(**sections: Any) -> dict[str, Any]:
    """A valid site (one water-level sensor on a TCP bus) with ``sections`` replaced; a fresh copy each time."""
    return copy.deepcopy({"gateway": {"id": "gw"}, "buses": [TCP], "devices": [LEVEL], **sections})


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, file="site.toml")
    return [str(p) for p in info.value.problems]


def with_key(data: dict[str, Any], path: str, key: str, value: object) -> dict[str, Any]:
    """``data`` with ``key`` added to the table at ``path`` (``devices[0].asset``, ``store.alarm``)."""
    node: Any = data
    for part in path.replace("]", "").replace("[", ".").split("."):
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (site(), "gateway"),
        (site(), "store"),
        (site(), "store.alarm"),
        (site(), "store.telemetry"),
        (site(), "web"),
        (site(), "buses[0]"),
        (site(buses=[{"name": "rtu", "kind": "modbus_rtu", "port": "/dev/ttyUSB0"}], devices=[]), "buses[0]"),
        (site(buses=[{"name": "line", "kind": "serial", "port": "/dev/ttyUSB1"}], devices=[]), "buses[0]"),
        (site(buses=[{"name": "radio", "kind": "ble"}], devices=[]), "buses[0]"),
        (site(), "devices[0]"),
        (site(), "devices[0].asset"),
        (site(uplinks=[dict(HTTP)]), "uplinks[0]"),
        (site(uplinks=[dict(MQTT)]), "uplinks[0]"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_an_unknown_key_is_refused_in_every_table_with_its_key_path(data: dict[str, Any], path: str) -> None:
    assert f"site.toml: {path}.colour: unknown key" in problems(with_key(data, path, "colour", "red"))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            site(buses=[{**TCP, "reconnect_min_ms": 5000, "reconnect_max_ms": 1000}]),
            "buses[0]: reconnect_max_ms must be >= reconnect_min_ms",
        ),
        (
            site(uplinks=[{**HTTP, "retry_min_ms": 5000, "retry_max_ms": 1000}]),
            "uplinks[0]: retry_max_ms must be >= retry_min_ms",
        ),
        (site(web={"tls_cert_file": "page.crt"}), "web: tls_cert_file and tls_key_file go together"),
        (
            site(web={"session_idle_s": 3600, "session_max_s": 600}),
            "web: session_max_s must be >= session_idle_s",
        ),
        (
            site(uplinks=[{**MQTT, "tls": False, "cert_file": "c.pem", "key_file": "k.pem"}]),
            "uplinks[0]: a client certificate needs tls = true",
        ),
        (
            site(uplinks=[{**HTTP, "url": "https://gw:pw@ingest.example.org/v1", "token_file": "t"}]),
            "uplinks[0].token_file: a bearer token cannot go with credentials in url",
        ),
        (site(gateway={"id": "gw", "state_dir": "/var/lib/edge\x00agent"}), "gateway.state_dir: contains a NUL"),
    ],
)
def test_settings_that_must_agree_are_refused_when_they_do_not(data: dict[str, Any], expected: str) -> None:
    found = problems(data)
    assert any(p.startswith(f"site.toml: {expected}") for p in found), found


@pytest.mark.parametrize(
    ("section", "key"),
    [("store", "commit_interval_ms"), ("devices[0]", "offline_after_failures"), ("uplinks[0]", "batch_max_readings")],
)
def test_zero_is_refused_where_it_would_mean_never_or_nothing(section: str, key: str) -> None:
    data = with_key(site(uplinks=[dict(HTTP)]), section, key, 0)
    assert any(p.startswith(f"site.toml: {section}.{key}: Input should be greater than") for p in problems(data))


def test_names_are_unique_within_their_section() -> None:
    found = problems(site(uplinks=[HTTP, {**MQTT, "name": "platform"}]))
    # Two destinations of one name would share one cursor, each getting part of the data.
    assert found == ["site.toml: uplinks[1].name: duplicate of uplinks[0].name"]


def test_a_unit_id_may_be_used_again_on_another_bus() -> None:
    parse_config(
        site(buses=[TCP, {**TCP, "name": "viaduct"}], devices=[LEVEL, {**LEVEL, "id": "wl-2", "bus": "viaduct"}])
    )


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ({"unit_id": None}, "devices[0].unit_id: required for a modbus device"),
        ({"key": "00112233445566778899aabbccddeeff"}, "devices[0].key: only BTHome devices take a key"),
        ({"stale_after_s": 60}, "devices[0].stale_after_s: polled devices go offline by failed polls"),
        ({"bus": "line"}, "devices[0].bus: profile 'generic_water_level' speaks modbus; bus 'line' is serial"),
        ({"bus": "nowhere"}, "devices[0].bus: no bus named 'nowhere'"),
    ],
)
def test_a_device_carries_what_its_protocol_needs_on_a_bus_that_speaks_it(
    device: dict[str, Any], expected: str
) -> None:
    dev = {k: v for k, v in {**LEVEL, **device}.items() if v is not None}
    data = site(buses=[TCP, {"name": "line", "kind": "serial", "port": "/dev/ttyUSB1"}], devices=[dev])
    found = problems(data)
    assert any(p.startswith(f"site.toml: {expected}") for p in found), found


def test_a_radar_has_its_serial_port_to_itself() -> None:
    radar = {"profile": "ti_mmwave_radar", "bus": "line", "asset": ASSET}
    data = site(
        buses=[{"name": "line", "kind": "serial", "port": "/dev/ttyUSB1"}],
        devices=[{**radar, "id": "radar-1"}, {**radar, "id": "radar-2"}],
    )
    assert "site.toml: buses[0]: a radar streams on its own port: one device only" in problems(data)


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    data = site(
        gateway={"id": "gw", "state_dir": "state"},
        web={"api_token_file": "secrets/api.token"},
        uplinks=[{**HTTP, "token_file": "secrets/platform.token"}],
    )
    cfg = parse_config(data, file=str(tmp_path / "site.toml"), base=tmp_path)
    assert cfg.gateway.state_dir == tmp_path / "state"
    assert cfg.web.api_token_file == tmp_path / "secrets" / "api.token"
    (uplink,) = cfg.uplinks
    assert uplink.token_file == tmp_path / "secrets" / "platform.token"


def test_alarms_keep_their_own_budget_refusing_new_ones_when_full_whatever_keys_are_given() -> None:
    assert DEFAULT_BUDGETS["alarm"].policy == "reject_new"
    store = parse_config(site()).store
    assert (store.alarm.max_bytes, store.alarm.policy) == (16 * MIB, "reject_new")
    assert (store.telemetry.max_bytes, store.telemetry.policy) == (256 * MIB, "drop_oldest")
    partial = parse_config(site(store={"alarm": {"max_bytes": 1 * MIB}, "telemetry": {"policy": "thin"}})).store
    assert (partial.alarm.max_bytes, partial.alarm.policy) == (1 * MIB, "reject_new")
    assert (partial.telemetry.max_bytes, partial.telemetry.policy) == (256 * MIB, "thin")
    assert partial.event == store.event
