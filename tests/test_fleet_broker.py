"""The broker side of docs/fleet.md, run as written: its Mosquitto ACL scopes each gateway to its own topics.

The ACL is read out of docs/fleet.md itself, so the documentation cannot drift from what
was tested. A real agent logs in as its gateway id; the integrators' user pushes to its
group and reads its report; the gateway's own credentials cannot push a bundle, not even
to itself, and another gateway cannot subscribe to its topics.
"""

from __future__ import annotations

import re
from pathlib import Path

import aiomqtt

from tests.fleetkit import (
    ROOT,
    FleetAgent,
    Reports,
    bundle,
    gateway_config,
    gateway_topic,
    group_topic,
    payload,
    publish,
    signers,
    write_trust,
)
from tests.mosquitto import Mosquitto

GW = "gw-0417"  # the names docs/fleet.md uses
USERS = {GW: "gw-secret-0417", "gw-0418": "gw-secret-0418", "fleet-ops": "ops-secret"}


def documented_acl() -> str:
    text = (ROOT / "docs" / "fleet.md").read_text()
    block = re.search(r"```text\n# mosquitto acl_file\n(.*?)```", text, re.S)
    assert block is not None, "docs/fleet.md lost its Mosquitto ACL"
    return block.group(1)


async def test_the_documented_acl_lets_a_gateway_take_pushes_but_never_make_or_see_others(tmp_path: Path) -> None:
    key = signers(1)
    trust = write_trust(tmp_path / "trust.json", key)
    (tmp_path / "broker.password").write_text(USERS[GW] + "\n")
    ops = {"user": "fleet-ops", "password": USERS["fleet-ops"]}
    async with (
        Mosquitto(tmp_path / "broker", users=USERS, acl=documented_acl()) as broker,
        Reports(broker.port, **ops) as reports,
    ):
        config = tmp_path / "site.toml"
        config.write_text(
            gateway_config(
                gateway=GW,
                state_dir=tmp_path / "state",
                trust_file=trust,
                site=payload(None, None),
                broker_port=broker.port,
                groups=["district-7"],
                mqtt_extra=f'username = "{GW}"\npassword_file = "{tmp_path / "broker.password"}"',
            )
        )
        agent = FleetAgent(config, tmp_path)
        await agent.start()
        try:
            await agent.wait_ready()
            await reports.wait(GW, lambda d: d["running_version"] == 0, "the gateway's report, read by fleet-ops")
            await publish(
                broker.port,
                group_topic("district-7"),
                bundle(payload(None, None), 1, key, groups=["district-7"]),
                **ops,
            )
            await reports.outcome(GW, 1, "applied")
            # The gateway's own credentials push a well-signed version 9: the broker drops it, so the
            # integrators' version 3 that follows is applied (version 9 would have won over it).
            own = {"user": GW, "password": USERS[GW]}
            v9 = bundle(payload(None, None) + "# 9\n", 9, key, gateways=[GW])
            await publish(broker.port, gateway_topic(GW), v9, **own)
            mark = reports.mark()
            v3 = bundle(payload(None, None) + "# 3\n", 3, key, groups=["district-7"])
            await publish(broker.port, group_topic("district-7"), v3, **ops)
            await reports.outcome(GW, 3, "applied", after=mark)
            assert not [r for r in reports.seen if (r["last"] or {}).get("version") == 9], "version 9 got through"
            # Another gateway sees none of it: its subscriptions to this gateway's and this group's
            # retained topics deliver nothing before a control message on its own topic does.
            async with aiomqtt.Client(
                "127.0.0.1",
                broker.port,
                username="gw-0418",
                password=USERS["gw-0418"],
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as other:
                for topic in (gateway_topic(GW), gateway_topic(GW, "reported"), group_topic("district-7")):
                    await other.subscribe(topic, qos=1)
                await other.subscribe(gateway_topic("gw-0418"), qos=1)
                await publish(broker.port, gateway_topic("gw-0418"), b"control", retain=False, **ops)
                got = []
                async for message in other.messages:
                    got.append(str(message.topic))
                    if message.payload == b"control":
                        break
                assert got == [gateway_topic("gw-0418")], got
        finally:
            code = await agent.stop()
    assert code == 0, agent.log_tail()
