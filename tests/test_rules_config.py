"""Rules in the config, as check-config, rules check and rules test see them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ISSUE_EXAMPLE = """
[[rules]]
name = "underpass-flooded"
subjects = { tags = ["underpass"] }        # one alarm per matching device; or inputs naming devices
inputs = { depth = "water_level" }         # a point of each subject, or "device/point"
when = "depth > 150"                        # raise when this has held for for_s
for_s = 30
clear_when = "depth < 100"                  # hysteresis: clear below a lower level
clear_for_s = 60
severity = "critical"
actions = [ { on = "raise", write = "sign-01/closure", value = 1 },
            { on = "clear", write = "sign-01/closure", value = 0 } ]
"""


def site(state: Path, rules: str = "", *, head: str = "", gateway: str = "") -> str:
    devices = "".join(
        f"""
[[devices]]
id = "{dev_id}"
profile = "{profile}"
bus = "field"
unit_id = {unit}
tags = {json.dumps(tags)}
[devices.asset]
location = "test bench"
owner = "tests"
"""
        for dev_id, profile, unit, tags in (
            ("wl-01", "generic_water_level", 1, ["underpass"]),
            ("wl-02", "generic_water_level", 2, ["underpass"]),
            ("sign-01", "generic_sign_controller", 40, ["closure-sign"]),
        )
    )
    return f"""{head}
[gateway]
id = "gw-test"
state_dir = "{state}"
{gateway}

[web]
enabled = false

[[buses]]
name = "field"
kind = "modbus_tcp"
host = "127.0.0.1"
port = 1502
{devices}
{rules}
"""


def edgeagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeagent", *args], capture_output=True, text=True, timeout=60)


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return edgeagent("check-config", str(path))


def test_the_issue_example_is_accepted_exactly_as_written(tmp_path: Path) -> None:
    result = check(tmp_path, site(tmp_path / "state", ISSUE_EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"


@pytest.mark.parametrize(
    ("change", "path", "says"),
    [
        # syntax
        (("depth > 150", "depth >> 150"), "rules[0].when", "rule 'underpass-flooded': 1:8: expected a number"),
        (("depth < 100", "depth < 100 or"), "rules[0].clear_when", "rule 'underpass-flooded': 1:15: expected"),
        # reference
        (("depth > 150", "deph > 150"), "rules[0].when", "1:1: unknown input 'deph'; did you mean 'depth'?"),
        (('"water_level"', '"water_levle"'), "rules[0].inputs.depth", "has no point 'water_levle'"),
        (('"sign-01/closure", value = 1', '"sign-02/closure", value = 1'), "rules[0].actions[0].write", "no device"),
        (('["underpass"]', '["underpas"]'), "rules[0].subjects.tags[0]", "no device carries tag 'underpas'"),
        (('"sign-01/closure", value = 1', '"wl-01/water_level", value = 1'), "rules[0].actions[0].write", "read-only"),
        # type
        (("depth > 150", "depth + 150"), "rules[0].when", "1:1: this must be a condition"),
        (("depth < 100", "depth < 100 and depth"), "rules[0].clear_when", "1:13: 'and' needs a condition"),
        (('"sign-01/closure", value = 1', '"sign-01/closure", value = 7'), "rules[0].actions[0].value", "coil"),
        (("for_s = 30", 'for_s = "30"'), "rules[0].for_s", ""),
    ],
)
def test_syntax_reference_and_type_errors_name_the_rule_the_field_and_where(
    tmp_path: Path, change: tuple[str, str], path: str, says: str
) -> None:
    old, new = change
    assert old in ISSUE_EXAMPLE
    result = check(tmp_path, site(tmp_path / "state", ISSUE_EXAMPLE.replace(old, new, 1)))
    assert result.returncode == 2, result.stdout
    line = next((x for x in result.stderr.splitlines() if f": {path}: " in x), None)
    assert line is not None, result.stderr
    assert says in line, line
    assert line.startswith(str(tmp_path / "site.toml"))


def test_a_multi_line_expression_error_gives_its_line_and_column(tmp_path: Path) -> None:
    rules = ISSUE_EXAMPLE.replace('when = "depth > 150"', "when = '''\ndepth > 150 and\n   depht > 1'''")
    result = check(tmp_path, site(tmp_path / "state", rules))
    assert "rules[0].when: rule 'underpass-flooded': 2:4: unknown input 'depht'" in result.stderr


def test_packs_are_included_relative_to_the_config_and_their_errors_name_the_pack(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "flood.toml").write_text(ISSUE_EXAMPLE)
    head = 'include = ["rules/*.toml"]'
    assert check(tmp_path, site(tmp_path / "state", head=head)).returncode == 0
    broken = ISSUE_EXAMPLE.replace("depth > 150", "depth > ") + ISSUE_EXAMPLE.replace("underpass-flooded", "x", 1)
    (tmp_path / "rules" / "flood.toml").write_text(broken.replace("severity", "severty", 1))
    result = check(tmp_path, site(tmp_path / "state", ISSUE_EXAMPLE.replace('"underpass-flooded"', '"x"'), head=head))
    pack = str(tmp_path / "rules" / "flood.toml")
    assert f"{pack}: rules[0].severty: unknown key; did you mean 'severity'?" in result.stderr
    missing = check(tmp_path, site(tmp_path / "state", head='include = ["rules/nope.toml"]'))
    assert "nope.toml" in missing.stderr and missing.returncode == 2
    (tmp_path / "rules" / "flood.toml").write_text(ISSUE_EXAMPLE)
    dup = check(tmp_path, site(tmp_path / "state", ISSUE_EXAMPLE, head=head))
    assert f"rules[0].name: rule 'underpass-flooded': duplicate of {tmp_path / 'site.toml'}: rules[0].name" in (
        dup.stderr
    )


def test_the_time_of_day_needs_the_gateway_time_zone(tmp_path: Path) -> None:
    night = '[[rules]]\nname = "night"\nwhen = "time_of_day > 23:00"\n'
    result = check(tmp_path, site(tmp_path / "state", night))
    assert "rules[0].when: rule 'night': uses the time of day: set gateway.time_zone" in result.stderr
    assert check(tmp_path, site(tmp_path / "state", night, gateway='time_zone = "Europe/Berlin"')).returncode == 0
    wrong = check(tmp_path, site(tmp_path / "state", night, gateway='time_zone = "Europe/Berlinn"'))
    assert "gateway.time_zone" in wrong.stderr and "unknown time zone 'Europe/Berlinn'" in wrong.stderr


def test_rules_check_lists_inputs_and_writes_and_rules_test_replays_a_trace(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(site(tmp_path / "state", ISSUE_EXAMPLE))
    listed = edgeagent("rules", "check", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "input depth: wl-01/water_level, wl-02/water_level" in listed.stdout
    assert "on raise: write 1 to sign-01/closure" in listed.stdout
    assert "on clear: write 0 to sign-01/closure" in listed.stdout
    trace = tmp_path / "trace.csv"
    rows = ["ts,device,point,value"]
    rows += [f"{1_800_000_000 + i},wl-01,water_level,{200 if i < 40 else 50}" for i in range(110)]
    rows += ["1800000110,wl-01,water_level,"]
    trace.write_text("\n".join(rows) + "\n")
    replayed = edgeagent("rules", "test", "--config", str(config), "--replay", str(trace))
    assert replayed.returncode == 0, replayed.stderr
    lines = [json.loads(x) for x in replayed.stdout.splitlines()]
    stale = {"t": 1_800_000_015, "kind": "alarm", "rule": "underpass-flooded", "subject": "wl-02", "state": "stale",
             "severity": "warning", "inputs": ["depth"]}  # fmt: skip
    assert lines[0] == stale, "wl-02 is in no row of the trace: stale after 3 poll intervals"
    assert lines[1:] == [
        {"t": 1_800_000_030, "kind": "alarm", "rule": "underpass-flooded", "subject": "wl-01", "state": "raised",
         "severity": "critical"},
        {"t": 1_800_000_030, "kind": "action", "rule": "underpass-flooded", "subject": "wl-01", "device": "sign-01",
         "point": "closure", "value": 1},
        {"t": 1_800_000_100, "kind": "alarm", "rule": "underpass-flooded", "subject": "wl-01", "state": "cleared",
         "severity": "critical"},
        {"t": 1_800_000_100, "kind": "action", "rule": "underpass-flooded", "subject": "wl-01", "device": "sign-01",
         "point": "closure", "value": 0},
    ]  # fmt: skip
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,device,point,value\n5,wl-01,water_level,1\n4,wl-01,water_level,1\n")
    refused = edgeagent("rules", "test", "--config", str(config), "--replay", str(bad))
    assert refused.returncode == 2 and "line 3" in refused.stderr


def test_rules_check_takes_a_pack_on_its_own() -> None:
    pack = Path(__file__).resolve().parents[1] / "config" / "rules" / "fog.toml"
    listed = edgeagent("rules", "check", str(pack))
    assert listed.returncode == 0, listed.stderr
    assert (
        "fog-200-fast-traffic (major): inputs vis = visibility_1min, speed = tag:radar/approach_speed" in listed.stdout
    )
