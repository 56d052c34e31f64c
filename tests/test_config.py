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
            "devices[0].poll_interval_s: Input should be a valid number",
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
