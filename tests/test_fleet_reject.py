"""Every way a push can be wrong is refused with its reason code, and the running config never stops.

One real agent (its clock taken as NTP-synchronised through tests/fleet_main.py, so
expiry is enforced) trusts 2 of 3 keys. After two good pushes, a stream of bad bundles
arrives on its retained topic, each waited for until its refusal is reported on the
retained ``config/reported`` topic; at the end the receiver must hold each refusal as an
event, version 2 must still run, and the untouched device must never have missed a poll.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from edgeagent.config import SiteConfig
from edgeagent.fleet.bundle import MAX_BUNDLE_BYTES
from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.fleetkit import (
    INTERVAL_S,
    FleetAgent,
    Reports,
    bundle,
    device,
    events,
    gateway_config,
    gateway_topic,
    group_topic,
    largest_gap,
    payload,
    publish,
    signers,
    times,
    write_trust,
)
from tests.helpers import wait_until
from tests.mosquitto import Mosquitto

GW = "gw-r"
BROKEN_RULE = """
[[rules]]
name = "flooded"
subjects = { devices = ["wl-01"] }
inputs = { depth = "water_level" }
when = "depth >"
"""


def _tampered_signature(raw: bytes) -> bytes:
    doc = json.loads(raw)
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[0] ^= 0x01
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(doc).encode()


def _tampered_payload(raw: bytes) -> bytes:
    """One byte of the payload changed (still valid base64 and TOML: only a signature can tell)."""
    doc = json.loads(raw)
    text = base64.b64decode(doc["payload"]).replace(b"commit_interval_ms = 100", b"commit_interval_ms = 900")
    doc["payload"] = base64.b64encode(text).decode()
    return json.dumps(doc).encode()


async def test_every_bad_push_is_refused_with_its_code_while_the_old_config_runs_on(tmp_path: Path) -> None:
    k1, k2, k3 = signers(3)
    stranger = signers(1)[0]
    trust = write_trust(tmp_path / "trust.json", [k1, k2, k3], threshold=2)
    async with (
        Mosquitto(tmp_path / "broker") as broker,
        WaterLevelSimulator(unit_ids=[1, 2]) as sim,
        IngestServer() as ingest,
        Reports(broker.port) as reports,
    ):

        def site(devices: str = device("wl-01", 1), extra: str = "") -> str:
            return payload(sim.port, ingest.url, devices, extra)

        config = tmp_path / "site.toml"
        config.write_text(
            gateway_config(
                gateway=GW,
                state_dir=tmp_path / "state",
                trust_file=trust,
                site=site(),
                broker_port=broker.port,
                groups=["north"],
            )
        )
        agent = FleetAgent(config, tmp_path, good_clock=True)
        await agent.start()
        topic = gateway_topic(GW)

        async def refused(raw: bytes, version: int | None, code: str) -> None:
            mark = reports.mark()
            await publish(broker.port, topic, raw)
            report = await reports.outcome(GW, version, "rejected", code, after=mark)
            assert report["running_version"] == 2, report

        try:
            await agent.wait_ready()
            await wait_until(lambda: len(times(ingest, GW, "wl-01/water_level")) >= 10, 15, "wl-01 polling")
            good = [k1, k2]
            v1 = bundle(site(device("wl-01", 1) + device("wl-02", 2)), 1, good, gateways=[GW])
            await publish(broker.port, topic, v1)
            await reports.outcome(GW, 1, "applied")
            await publish(broker.port, topic, bundle(site(), 2, [k2, k3], gateways=[GW]))
            await reports.outcome(GW, 2, "applied")

            # Signatures are checked before anything of the payload is read: garbage under a
            # bad or unknown signature is refused for the signature, not for the garbage.
            garbage = b"\xff\xfe this is not TOML"
            await refused(_tampered_signature(bundle(site(), 3, good, gateways=[GW])), 3, "bad_signature")
            await refused(_tampered_signature(bundle(garbage, 3, good, gateways=[GW])), 3, "bad_signature")
            await refused(bundle(garbage, 3, [stranger], gateways=[GW]), 3, "untrusted_key")
            await refused(_tampered_payload(bundle(site(), 3, good, gateways=[GW])), 3, "bad_signature")
            await refused(bundle(site(), 3, [k1], gateways=[GW]), 3, "below_threshold")
            await refused(bundle(site(), 3, [k1, stranger], gateways=[GW]), 3, "below_threshold")
            # No replay, no downgrade: the same version again (new bytes), an older one, and the
            # very bytes of version 1 again, which is not even decided twice.
            await publish(broker.port, group_topic("north"), v1)
            await refused(bundle(site() + "# again\n", 2, good, gateways=[GW]), 2, "not_newer")
            await refused(bundle(site() + "# older\n", 1, good, gateways=[GW]), 1, "not_newer")
            expired = int(time.time()) - 60
            await refused(bundle(site(), 3, good, gateways=[GW], expires_at=expired), 3, "expired")
            await refused(bundle(site(), 3, good, gateways=["gw-other"], groups=["south"]), 3, "not_for_me")
            await refused(bundle(site(extra="[uplinks.x]\n"), 3, good, gateways=[GW]), 3, "schema")
            await refused(
                bundle(
                    site().replace("commit_interval_ms = 100", 'commit_interval_ms = "fast"'), 3, good, gateways=[GW]
                ),
                3,
                "schema",
            )
            await refused(bundle(site(device("wl-09", 9, bus="nowhere")), 3, good, gateways=[GW]), 3, "reference")
            rtu = '\n[[buses]]\nname = "rs485"\nkind = "modbus_rtu"\nport = "/dev/ttyEDGEAGENT-NONE"\n'
            await refused(
                bundle(site(device("wl-01", 1) + device("wl-05", 5, bus="rs485"), rtu), 3, good, gateways=[GW]),
                3,
                "dry_run",
            )
            huge = site() + "#" + "x" * MAX_BUNDLE_BYTES + "\n"
            await refused(bundle(huge, 3, good, gateways=[GW]), None, "schema")
            fleet_section = f'\n[fleet]\ntrust_file = "{trust}"\n[fleet.http]\nurl = "http://127.0.0.1:9/x"\n'
            await refused(bundle(site(extra=fleet_section), 3, good, gateways=[GW]), 3, "schema")
            await refused(bundle('[gateway]\nid = "gw-other"\n' + site(), 3, good, gateways=[GW]), 3, "schema")
            expected = 17
            if "rules" in SiteConfig.model_fields:  # [[rules]] come with the rules engine
                await refused(bundle(site(extra=BROKEN_RULE), 3, good, gateways=[GW]), 3, "rule")
                expected += 1

            # The old config kept running all along.
            before = len(times(ingest, GW, "wl-01/water_level"))
            await wait_until(lambda: len(times(ingest, GW, "wl-01/water_level")) >= before + 10, 10, "wl-01 on")
            await wait_until(
                lambda: sum(e["vs"].startswith("rejected") for e in events(ingest, GW, "fleet_config")) >= expected,
                15,
                "every refusal upstream",
            )
        finally:
            code = await agent.stop()

    assert code == 0, agent.log_tail()
    assert largest_gap(times(ingest, GW, "wl-01/water_level")) <= 1.5 * INTERVAL_S
    refusals = [e["vs"] for e in events(ingest, GW, "fleet_config") if e["vs"].startswith("rejected")]
    assert {vs.split(": ")[1] for vs in refusals} >= {
        "bad_signature",
        "untrusted_key",
        "below_threshold",
        "not_newer",
        "expired",
        "not_for_me",
        "schema",
        "reference",
        "dry_run",
    }
    # The literal replay of version 1 was never decided again: only the two pushes were applied.
    assert [e["vs"] for e in events(ingest, GW, "fleet_config") if e["vs"] == "applied"] == ["applied", "applied"]
    assert all(
        r["running_version"] == 2
        for r in reports.seen
        if r["gateway"] == GW and r["last"] and r["last"].get("outcome") == "rejected"
    )
