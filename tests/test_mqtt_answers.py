"""The MQTT uplink reads the broker's every answer right: PUBACK reason codes, a refused login, a missing PUBACK.

The broker is ``ScriptedBroker``, a real MQTT 5 peer on loopback that answers with the
codes each test chooses (Mosquitto cannot be made to): what the uplink sends is what it
would send to any broker, and what it does with each answer is what the sync worker sees.
"""

from __future__ import annotations

import asyncio

import pytest

from edgeagent.errors import UplinkRetryLater
from edgeagent.uplinks.mqtt import PublishRefused
from tests.helpers import wait_until
from tests.mqttpeer import ScriptedBroker
from tests.test_mqtt import CLIENT_ID, GATEWAY, a_batch, started, uplink_cfg

NO_ANSWER = -1


async def test_puback_codes_below_0x80_acknowledge_0x80_and_up_refuse_and_quota_codes_retry() -> None:
    answers: dict[str, int] = {}

    def puback(topic: str) -> int:
        return answers.get("readings", 0) if "/readings/" in topic else 0

    async with ScriptedBroker(puback=puback) as broker, started(uplink_cfg(broker.port)) as uplink:
        await asyncio.wait_for(uplink.link_up(), 5)
        for code in (0x00, 0x10):  # success, and "no matching subscribers": both acknowledge
            answers["readings"] = code
            await uplink.send(*a_batch(1))
        for code in (0x80, 0x87, 0x99):  # unspecified error, not authorized, payload format invalid
            answers["readings"] = code
            with pytest.raises(PublishRefused) as refused:
                await uplink.send(*a_batch(1))
            assert refused.value.status == code
        for code in (0x97, 0x91):  # quota exceeded, packet identifier in use: a later retry may pass
            answers["readings"] = code
            with pytest.raises(UplinkRetryLater, match=f"PUBACK 0x{code:02X}") as later:
                await uplink.send(*a_batch(1))
            assert not later.value.link_down, "the link works: this is the broker's word, not a lost connection"
        answers["readings"] = 0x00
        await uplink.send(*a_batch(1))  # a refusal leaves nothing behind for the next publish
    assert [p.answered for p in broker.readings()] == [0x00, 0x10, 0x80, 0x87, 0x99, 0x97, 0x91, 0x00]


async def test_a_batch_goes_at_qos_1_not_retained_on_its_class_topic_with_its_identity_as_properties() -> None:
    async with ScriptedBroker() as broker, started(uplink_cfg(broker.port)) as uplink:
        await asyncio.wait_for(uplink.link_up(), 5)
        batch, payload = a_batch(7, n=5)
        await uplink.send(batch, payload)
    status, reading = broker.publishes[0], broker.readings()[0]
    assert (status.topic, status.payload) == (f"edgeagent/{GATEWAY}/status", b"online")
    assert (status.qos, status.retain) == (1, True)
    assert (reading.topic, reading.qos, reading.retain) == (f"edgeagent/{GATEWAY}/readings/telemetry", 1, False)
    assert (reading.content_type, reading.payload_format) == ("application/senml+json", 0)
    assert reading.payload == payload
    assert reading.user == {
        "idempotency-key": f"{GATEWAY}::7-11",
        "buffer-id": "",
        "first-seq": "7",
        "last-seq": "11",
        "count": "5",
        "content-encoding": "gzip",
    }


async def test_the_session_is_persistent_and_its_will_is_a_retained_delayed_offline() -> None:
    async with ScriptedBroker() as broker, started(uplink_cfg(broker.port, session_expiry_s=7200)) as uplink:
        await asyncio.wait_for(uplink.link_up(), 5)
    (connect,) = broker.connects
    assert connect.client_id == CLIENT_ID
    assert not connect.clean_start, "a persistent session: the broker keeps it across reconnects"
    assert connect.session_expiry_s == 7200
    assert (connect.will_topic, connect.will_payload) == (f"edgeagent/{GATEWAY}/status", b"offline")
    assert (connect.will_qos, connect.will_retain) == (1, True), "a watcher that connects later still sees it"
    assert connect.will_delay_s == 10, "a quick rebuild does not flap the status"


async def test_a_refused_login_waits_at_least_half_the_longest_backoff_before_the_next_try() -> None:
    retry_max_s = 1.0
    async with (
        ScriptedBroker(connack=0x86) as broker,  # bad user name or password
        started(uplink_cfg(broker.port, retry_min_ms=50, retry_max_ms=int(retry_max_s * 1000))) as uplink,
    ):
        await wait_until(lambda: len(broker.connects) >= 2, 5, "a second login attempt")
        assert "Bad user name or password" in (uplink.problem or "")
    gap = broker.connects[1].at - broker.connects[0].at
    # Bad credentials do not get better in 50 ms: a fleet must not hammer its broker with them.
    assert gap >= retry_max_s / 2 - 0.05, f"retried {gap:.2f} s after a refused login"


async def test_no_puback_within_ack_timeout_fails_the_send_and_the_client_is_rebuilt() -> None:
    async with (
        ScriptedBroker(puback=lambda topic: NO_ANSWER if "/readings/" in topic else 0) as broker,
        started(uplink_cfg(broker.port, ack_timeout_s=0.3)) as uplink,
    ):
        await asyncio.wait_for(uplink.link_up(), 5)
        try:
            async with asyncio.timeout(10):
                with pytest.raises(UplinkRetryLater, match=r"no PUBACK within 0\.3 s") as late:
                    await uplink.send(*a_batch(1))
        except TimeoutError:
            pytest.fail("send still waiting for a PUBACK 10 s after ack_timeout_s = 0.3")
        assert late.value.link_down
        await wait_until(lambda: len(broker.connects) >= 2, 5, "a new connection replacing the stalled one")
