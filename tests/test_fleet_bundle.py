"""The parts of a push that need no broker: envelope, signatures, trust, slots, composition, the CLI's files.

Real Ed25519 keys, real files in tmp_path; each refusal is checked by its reason code.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import pytest

from edgeagent.cli import main
from edgeagent.config import load_config
from edgeagent.errors import ConfigError
from edgeagent.fleet.bundle import MAX_BUNDLE_BYTES, Rejected, payload_of, read_bundle, split_bundles, verify
from edgeagent.fleet.cli import judge, parse_broker, topics_for
from edgeagent.fleet.compose import compose
from edgeagent.fleet.slots import LAST_GOOD, SlotConfig, Slots
from edgeagent.fleet.trust import TrustError, parse_trust
from edgeagent.preflight import check_site
from tests.fleetkit import bundle, gateway_config, signers, trust_of, write_trust

SITE = "[store]\ncommit_interval_ms = 100\n\n[web]\nenabled = false\n"


def _code(call: object, *args: object) -> str:
    with pytest.raises(Rejected) as info:
        call(*args)  # type: ignore[operator]
    return info.value.code


def _edit(raw: bytes, **changes: object) -> bytes:
    doc = json.loads(raw)
    doc.update(changes)
    return json.dumps(doc).encode()


def test_a_signed_bundle_verifies_and_any_field_changed_after_signing_does_not() -> None:
    k1, k2 = signers(2)
    trust = trust_of([k1])
    raw = bundle(SITE, 7, [k1], gateways=["gw-1"], expires_at=int(time.time()) + 60)
    b = read_bundle(raw)
    assert verify(b, trust) == [k1.id] and payload_of(b) == SITE.encode()
    for change in (
        {"version": 8},
        {"targets": {"gateways": ["gw-2"], "groups": []}},
        {"expires_at": None},
        {"issued_at": 1},
        {"kind": "trust"},
    ):
        assert _code(verify, read_bundle(_edit(raw, **change)), trust) == "bad_signature", change
    assert _code(verify, b, trust_of([k2])) == "untrusted_key"
    # A signature over another bundle's content, under the right key id, does not verify either.
    other = json.loads(bundle(SITE + "# other\n", 7, [k1], gateways=["gw-1"]))
    forged = _edit(raw, signatures=other["signatures"])
    assert _code(verify, read_bundle(forged), trust) == "bad_signature"


def test_a_threshold_counts_distinct_trusted_keys_only() -> None:
    k1, k2, k3 = signers(3)
    stranger = signers(1)[0]
    trust = trust_of([k1, k2, k3], threshold=2)
    assert sorted(verify(read_bundle(bundle(SITE, 1, [k1, k3], groups=["g"])), trust)) == sorted([k1.id, k3.id])
    assert _code(verify, read_bundle(bundle(SITE, 1, [k1], groups=["g"])), trust) == "below_threshold"
    assert _code(verify, read_bundle(bundle(SITE, 1, [k1, k1], groups=["g"])), trust) == "below_threshold"
    assert _code(verify, read_bundle(bundle(SITE, 1, [k1, stranger], groups=["g"])), trust) == "below_threshold"
    assert _code(verify, read_bundle(_edit(bundle(SITE, 1, [k1], groups=["g"]), signatures=[])), trust) == (
        "below_threshold"
    )


def test_the_envelope_is_refused_for_its_size_or_shape_before_anything_else() -> None:
    (k1,) = signers(1)
    raw = bundle(SITE, 1, [k1], gateways=["gw-1"])
    text = raw.decode()
    cases = {
        "too large": bundle("#" + "x" * MAX_BUNDLE_BYTES, 1, [k1], gateways=["gw-1"]),
        "not JSON": b"\x00\x01garbage",
        "a key twice": text.replace('"version": 1', '"version": 1, "version": 2', 1).encode(),
        "a float": text.replace('"version": 1', '"version": 1.0', 1).encode(),
        "NaN": text.replace('"version": 1', '"version": NaN', 1).encode(),
        "unknown key": _edit(raw, extra=1),
        "no targets": _edit(raw, targets={"gateways": [], "groups": []}),
        "bool version": _edit(raw, version=True),
        "bad digest": _edit(raw, payload_sha256="ABC"),
        "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    }
    for what, bad in cases.items():
        assert _code(read_bundle, bad) == "schema", what
    assert (
        split_bundles(b"[" + raw + b"," + raw + b"]")
        == [json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()] * 2
    )


def test_a_payload_whose_digest_does_not_match_is_refused_even_under_a_good_signature() -> None:
    """The signer signs the digest it was given; a payload that does not match it is not the signed one."""
    from edgeagent.fleet.bundle import DOMAIN, canonical

    (k1,) = signers(1)
    doc = json.loads(bundle(SITE, 1, [k1], gateways=["gw-1"]))
    doc["payload"] = base64.b64encode(b"[store]\n").decode()  # digest left as it was
    unsigned = {k: v for k, v in doc.items() if k != "signatures"}
    doc["signatures"] = [{"key_id": k1.id, "sig": base64.b64encode(k1.key.sign(DOMAIN + canonical(unsigned))).decode()}]
    b = read_bundle(json.dumps(doc).encode())
    verify(b, trust_of([k1]))
    assert _code(payload_of, b) == "bad_signature"


def test_a_trust_file_is_checked_key_by_key() -> None:
    k1, k2 = signers(2)
    good = json.loads(trust_of([k1, k2], threshold=2).to_json())
    assert parse_trust(json.dumps(good).encode()).threshold == 2
    bad_cases = [
        {**good, "threshold": 3},
        {**good, "epoch": 0},
        {**good, "keys": [{**good["keys"][0], "id": good["keys"][1]["id"]}, good["keys"][1]]},
        {**good, "keys": [good["keys"][0], good["keys"][0]]},
        {**good, "keys": [{"id": "x", "public_key": "not base64!"}]},
        {**good, "keys": [{"id": "x", "public_key": base64.b64encode(b"short").decode()}]},
        {**good, "format": "something/2"},
        {**good, "extra": True},
        {**good, "keys": []},
    ]
    for case in bad_cases:
        with pytest.raises(TrustError):
            parse_trust(json.dumps(case).encode())


def test_slots_are_replaced_whole_and_a_damaged_one_reads_as_absent(tmp_path: Path) -> None:
    slots = Slots(tmp_path / "fleet")
    slot = SlotConfig(3, "d" * 64, SITE.encode(), 1, None, 2.0)
    slots.write_candidate(slot)
    slots.commit_candidate()
    assert slots.last_good() == slot and slots.candidate() is None
    assert stat.S_IMODE((tmp_path / "fleet" / LAST_GOOD).stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "fleet").iterdir()] == [LAST_GOOD]  # no temporary file left
    (tmp_path / "fleet" / ".last_good.json.tmp").write_text('{"version": 9')  # a write cut short
    assert slots.last_good() == slot
    doc = json.loads((tmp_path / "fleet" / LAST_GOOD).read_text())
    doc["payload"] = base64.b64encode(b"changed").decode()
    (tmp_path / "fleet" / LAST_GOOD).write_text(json.dumps(doc))
    assert slots.last_good() is None  # its payload no longer matches its digest
    (tmp_path / "fleet" / "pending.json").write_text("{not json")
    marker = slots.marker()
    assert marker is not None and marker.version == 0  # a marker is there: an apply began


def _local(tmp_path: Path, site: str = SITE) -> tuple[Path, object]:
    (k1,) = signers(1)
    trust = write_trust(tmp_path / "trust.json", [k1])
    config = tmp_path / "site.toml"
    text = gateway_config(gateway="gw-1", state_dir=tmp_path / "state", trust_file=trust, site=site, broker_port=1883)
    config.write_text(text)
    return config, load_config(config)


def test_a_payload_runs_with_the_local_bootstrap_and_cannot_change_it(tmp_path: Path) -> None:
    config, local = _local(tmp_path)
    (tmp_path / "token").write_text("secret\n")
    uplink = '\n[[uplinks]]\nname = "up"\nkind = "http"\nurl = "http://127.0.0.1:9/x"\ntoken_file = "token"\n'
    site = compose(local, (SITE + uplink).encode(), config)  # type: ignore[arg-type]
    assert site.gateway == local.gateway and site.fleet == local.fleet  # type: ignore[attr-defined]
    assert site.uplinks[0].token_file == tmp_path / "token"  # relative to the local file's folder
    same = f'[gateway]\nid = "gw-1"\nstate_dir = "state"\n{SITE}'
    assert compose(local, same.encode(), config).gateway == local.gateway  # type: ignore[arg-type,attr-defined]
    refused = {
        "fleet": SITE + '\n[fleet]\ntrust_file = "trust.json"\n',
        "id": '[gateway]\nid = "gw-2"\n' + SITE,
        "state_dir": '[gateway]\nstate_dir = "/elsewhere"\n' + SITE,
    }
    for what, text in refused.items():
        with pytest.raises(Rejected) as info:
            compose(local, text.encode(), config)  # type: ignore[arg-type]
        assert info.value.code == "schema" and "bootstrap" in info.value.reason, what


def test_a_refused_payload_is_classified_schema_reference_or_rule(tmp_path: Path) -> None:
    config, local = _local(tmp_path)
    cases = {
        "schema": SITE.replace("100", '"fast"'),
        "reference": SITE + '\n[[uplinks]]\nname = "up"\nkind = "http"\nurl = "http://h/x"\ntoken_file = "nope"\n',
    }
    for code, text in cases.items():
        with pytest.raises(Rejected) as info:
            compose(local, text.encode(), config)  # type: ignore[arg-type]
        assert info.value.code == code, (code, info.value)
    with pytest.raises(Rejected) as info:
        compose(local, b"\xff\xfe", config)  # type: ignore[arg-type]
    assert info.value.code == "schema"


def test_check_config_refuses_a_bad_trust_file_or_an_unreadable_fleet_secret_by_key_path(tmp_path: Path) -> None:
    config, _ = _local(tmp_path)
    (tmp_path / "trust.json").write_text('{"format": "edgeagent-trust/1"}')
    with pytest.raises(ConfigError) as info:
        check_site(load_config(config))
    assert [p.path for p in info.value.problems] == ["fleet.trust_file"]
    text = config.read_text().replace("tls = false", 'tls = false\nusername = "u"\npassword_file = "missing"')
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        check_site(load_config(config))
    assert sorted(p.path for p in info.value.problems) == ["fleet.mqtt.password_file", "fleet.trust_file"]


def test_the_cli_makes_keys_trust_and_bundles_and_refuses_what_a_gateway_would(tmp_path: Path, capsys) -> None:
    keys = tmp_path / "keys"
    assert main(["fleet", "keygen", "--out", str(keys)]) == 0
    assert stat.S_IMODE((keys / "signing.key").stat().st_mode) == 0o600
    assert main(["fleet", "keygen", "--out", str(keys)]) == 2  # never overwrites a key
    trust = tmp_path / "trust.json"
    assert main(["fleet", "trust", "--pub", str(keys / "signing.pub"), "--threshold", "2", "--out", str(trust)]) == 2
    assert main(["fleet", "trust", "--pub", str(keys / "signing.pub"), "--out", str(trust)]) == 0
    site = tmp_path / "site.toml"
    out = tmp_path / "b.json"
    sign = ["fleet", "sign", str(site), "--key", str(keys / "signing.key"), "--version", "4", "--out", str(out)]
    site.write_text(SITE)
    assert main(sign) == 2  # no target
    site.write_text(SITE + '\n[fleet]\ntrust_file = "t"\n')
    assert main([*sign, "--group", "g"]) == 2
    site.write_text(
        SITE + '\n[[devices]]\nid = "d"\nprofile = "generic_water_level"\nbus = "nope"\n'
        '[devices.asset]\nlocation = "x"\nowner = "y"\n'
    )
    capsys.readouterr()
    assert main([*sign, "--group", "g"]) == 2
    assert "devices[0].bus" in capsys.readouterr().err
    site.write_text(SITE)
    assert main([*sign, "--group", "g", "--expires-in-days", "1"]) == 0
    assert read_bundle(out.read_bytes()).expires_at is not None
    assert main(["fleet", "verify", str(out), "--trust", str(trust)]) == 0
    out.write_bytes(_edit(out.read_bytes(), version=5))
    capsys.readouterr()
    assert main(["fleet", "verify", str(out), "--trust", str(trust)]) == 1
    assert "rejected: bad_signature" in capsys.readouterr().out
    # A trust file signs into a trust bundle whose version is its epoch.
    sign_trust = ["fleet", "sign", str(trust), "--key", str(keys / "signing.key"), "--group", "g", "--out", str(out)]
    assert main([*sign_trust, "--version", "2"]) == 2
    assert main([*sign_trust, "--version", "1"]) == 0 and read_bundle(out.read_bytes()).kind == "trust"
    assert os.path.getsize(out) < MAX_BUNDLE_BYTES


def test_status_judges_each_gateway_against_the_pushed_version() -> None:
    def report(running: int, outcome: str | None, version: int | None = None) -> dict:
        return {"running_version": running, "last": outcome and {"outcome": outcome, "version": version}}

    assert judge(report(3, "applied", 3), 3) == "applied"
    assert judge(report(4, "rejected", 5), 3) == "applied"  # ahead of the group by a gateway push
    assert judge(report(2, "rolled_back", 3), 3) == "failed"
    assert judge(report(2, "rejected", 1), 3) == "pending"  # an old refusal says nothing of version 3
    assert judge(report(2, "applying", 3), 3) == "pending"
    assert judge(report(0, None), None) == "local"
    assert judge(report(2, "rejected", 3), None) == "failed"
    broker = parse_broker("mqtts://ops:p%40ss@broker.example/fleet/prod")
    assert (broker.port, broker.tls, broker.password, broker.prefix) == (8883, True, "p@ss", "fleet/prod")
    assert topics_for("trust", "p", ("gw",), ("g",)) == ["p/gw/config/trust", "p/groups/g/config/trust"]
