"""The MQTT uplink against a real Mosquitto: acknowledgement, restarts, a hung broker, TLS, refusals.

The receiver here is what docs/uplinks.md tells an operator to run: a persistent session
(clean start off, a session expiry) subscribed with QoS 1, which reconnects after a
broker restart, drops a batch whose idempotency key it has seen and a record whose
``seq`` it has seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeagent.agent import STORE_FILE, Agent
from edgeagent.config import MqttUplinkConfig, load_config
from edgeagent.errors import ConfigError, UplinkRetryLater
from edgeagent.model import Priority, Quality, StoredReading
from edgeagent.sim.water_level import WaterLevelSimulator
from edgeagent.store import Batch
from edgeagent.sync.senml import decode, encode_gzip
from edgeagent.uplinks.mqtt import LinkState, MqttUplink
from tests.helpers import site_toml, uplink_running, wait_until
from tests.mosquitto import Mosquitto, make_pki

GATEWAY = "gw-test"
UPLINK = "broker"
CLIENT_ID = f"edgeagent-{GATEWAY}-{UPLINK}"
READINGS_TOPICS = f"edgeagent/{GATEWAY}/readings/#"
STATUS_TOPIC = f"edgeagent/{GATEWAY}/status"
PASSWORD = "s3cret-broker-pw"


# -- a receiver --------------------------------------------------------------------------


@dataclass(slots=True)
class Received:
    topic: str
    retain: bool
    payload: bytes
    content_type: str | None = None
    payload_format: int | None = None
    user: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.user["idempotency-key"]

    def records(self) -> list[dict[str, object]]:
        return decode(gzip.decompress(self.payload))

    def seqs(self) -> list[int]:
        return [int(rec["seq"]) for rec in self.records()]  # type: ignore[call-overload]


class Subscriber:
    """A persistent-session QoS 1 subscriber that rides out broker restarts."""

    def __init__(self, broker: Mosquitto, topic: str, *, client_id: str = "test-receiver") -> None:
        self.broker = broker
        self.topic = topic
        self.client_id = client_id
        self.messages: list[Received] = []
        self.connections = 0
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        session = Properties(PacketTypes.CONNECT)
        session.SessionExpiryInterval = 600
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.broker.port,
                    identifier=self.client_id,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    properties=session,
                ) as client:
                    self.connections += 1
                    await client.subscribe(self.topic, qos=1)
                    self._subscribed.set()
                    async for message in client.messages:
                        self._keep(message)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)

    def _keep(self, message: aiomqtt.Message) -> None:
        props = message.properties
        assert isinstance(message.payload, bytes)
        self.messages.append(
            Received(
                topic=message.topic.value,
                retain=message.retain,
                payload=message.payload,
                content_type=getattr(props, "ContentType", None),
                payload_format=getattr(props, "PayloadFormatIndicator", None),
                user=dict(getattr(props, "UserProperty", [])),
            )
        )

    def unique_seqs(self) -> set[int]:
        return {s for m in self.messages for s in m.seqs()}

    async def __aenter__(self) -> Subscriber:
        self._task = asyncio.create_task(self._run(), name="test-receiver")
        await asyncio.wait_for(self._subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass(slots=True)
class Deduped:
    """What a receiver keeps: seqs per topic in arrival order, and what it dropped."""

    by_topic: dict[str, list[int]]
    repeated_keys: int
    overlapping: list[tuple[str, str]]  # (first key, later key) that shared records


def dedupe(messages: list[Received]) -> Deduped:
    seen_keys: set[str] = set()
    owner: dict[int, str] = {}
    by_topic: dict[str, list[int]] = {}
    repeated = 0
    overlapping: list[tuple[str, str]] = []
    for m in messages:
        if m.key in seen_keys:
            repeated += 1
            continue
        seen_keys.add(m.key)
        for seq in m.seqs():
            if seq in owner:
                overlapping.append((owner[seq], m.key))
                continue
            owner[seq] = m.key
            by_topic.setdefault(m.topic, []).append(seq)
    return Deduped(by_topic, repeated, overlapping)


def assert_exactly_once_in_order(messages: list[Received], up_to: int) -> Deduped:
    result = dedupe(messages)
    every = sorted(s for seqs in result.by_topic.values() for s in seqs)
    assert every[:up_to] == list(range(1, up_to + 1)), "every sequence number, none missing"
    assert len(every) == len(set(every))
    for topic, seqs in result.by_topic.items():
        assert seqs == sorted(seqs), f"{topic}: out of order"
    # A retry may be a larger batch than the attempt before it (new readings arrived
    # meanwhile): same first seq, later last seq. That is the only overlap allowed.
    for first_key, later_key in result.overlapping:
        assert first_key.split(":")[-1].split("-")[0] == later_key.split(":")[-1].split("-")[0], (first_key, later_key)
    return result


# -- the agent and the uplink -----------------------------------------------------------


def mqtt_site(tmp_path: Path, *, sensor_port: int, broker_port: int, poll_interval_s: float, uplink: str) -> Path:
    """The shared test site with its HTTP uplink swapped for an MQTT one."""
    base = site_toml(
        state_dir=tmp_path / "state",
        modbus_port=sensor_port,
        ingest_url="http://127.0.0.1:9/unused",
        poll_interval_s=poll_interval_s,
    ).split("[[uplinks]]")[0]
    path = tmp_path / "site.toml"
    path.write_text(
        f"""{base}
[[uplinks]]
name = "{UPLINK}"
kind = "mqtt"
host = "127.0.0.1"
port = {broker_port}
tls = false
retry_min_ms = 50
retry_max_ms = 500
{uplink}
"""
    )
    return path


@contextlib.asynccontextmanager
async def running_agent(site: Path) -> AsyncIterator[Agent]:
    agent = Agent(load_config(site))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="agent-under-test")
    ready = asyncio.create_task(agent.ready.wait(), name="agent-ready")
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task.done():
        task.result()
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


def telemetry_cursor(state_dir: Path) -> int:
    conn = sqlite3.connect(f"file:{state_dir / STORE_FILE}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT seq FROM cursors WHERE destination = ? AND priority = ?", (UPLINK, int(Priority.TELEMETRY))
        ).fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


def uplink_cfg(port: int, **kwargs: object) -> MqttUplinkConfig:
    fields: dict[str, object] = {
        "kind": "mqtt",
        "name": UPLINK,
        "host": "127.0.0.1",
        "port": port,
        "tls": False,
        "retry_min_ms": 50,
        "retry_max_ms": 500,
        **kwargs,
    }
    return MqttUplinkConfig.model_validate(fields)


def a_batch(first: int, n: int = 5) -> tuple[Batch, bytes]:
    now = time.time()
    readings = [
        StoredReading(seq, "wl-01", "water_level", now + i, 12.5 + i, "mm", Quality.GOOD, Priority.TELEMETRY)
        for i, seq in enumerate(range(first, first + n))
    ]
    return Batch(UPLINK, Priority.TELEMETRY, readings, readings[-1].seq), encode_gzip(GATEWAY, readings)


def started(cfg: MqttUplinkConfig) -> contextlib.AbstractAsyncContextManager[MqttUplink]:
    return uplink_running(MqttUplink(cfg, GATEWAY))


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    async with Mosquitto(tmp_path / "broker") as server:
        yield server


def connections_in_log(broker: Mosquitto) -> int:
    return broker.log_path.read_text().count(f" as {CLIENT_ID} ")


# -- the tests --------------------------------------------------------------------------


async def test_batches_carry_senml_and_properties_and_the_cursor_moves_on_puback(
    tmp_path: Path, sensor: WaterLevelSimulator, broker: Mosquitto
) -> None:
    site = mqtt_site(tmp_path, sensor_port=sensor.port, broker_port=broker.port, poll_interval_s=0.05, uplink="")
    async with Subscriber(broker, READINGS_TOPICS) as receiver:
        async with running_agent(site) as agent:
            live = agent.live.uplinks[UPLINK]
            assert live.target == f"mqtt://127.0.0.1:{broker.port}"
            await wait_until(lambda: len(receiver.messages) >= 3, 15, "three batches")
        cursor = telemetry_cursor(tmp_path / "state")
        await wait_until(lambda: max(receiver.unique_seqs()) >= cursor, 5, "the last acknowledged batch")
    assert cursor > 0 and live.readings_sent == cursor, "the cursor is exactly what was acknowledged"
    assert_exactly_once_in_order(receiver.messages, cursor)
    # The gateway's own events ("new buffer", the sensor's "online") go first, on their topic
    # (in one batch or two: a reading is sent as soon as it has its number).
    telemetry_at = next(i for i, m in enumerate(receiver.messages) if m.topic.endswith("/telemetry"))
    first = receiver.messages[:telemetry_at]
    assert first and all(m.topic == f"edgeagent/{GATEWAY}/readings/event" for m in first)
    names = [rec["n"] for m in first for rec in m.records()]
    assert sorted(names) == [f"{GATEWAY}/gateway/store_created", f"{GATEWAY}/wl-01/state"]
    m = next(m for m in receiver.messages if m.topic.endswith("/telemetry"))
    assert not m.retain
    assert m.content_type == "application/senml+json" and m.payload_format == 0
    seqs = m.seqs()
    buffer_id = m.records()[0]["bid"]
    assert isinstance(buffer_id, str) and len(buffer_id) == 16
    assert m.user == {
        "idempotency-key": f"{GATEWAY}:{buffer_id}:{seqs[0]}-{seqs[-1]}",
        "buffer-id": buffer_id,
        "first-seq": str(seqs[0]),
        "last-seq": str(seqs[-1]),
        "count": str(len(seqs)),
        "content-encoding": "gzip",
    }
    records = m.records()
    assert records[0]["n"] == f"{GATEWAY}/wl-01/water_level" and records[0]["u"] == "mm"


async def test_ten_broker_restarts_mid_stream_deliver_every_seq_once_in_order(
    tmp_path: Path, sensor: WaterLevelSimulator, broker: Mosquitto
) -> None:
    """Acceptance 1: the broker restarts ten times while batches flow."""
    site = mqtt_site(
        tmp_path,
        sensor_port=sensor.port,
        broker_port=broker.port,
        poll_interval_s=0.02,
        uplink="batch_max_readings = 10\nack_timeout_s = 2.0",
    )
    async with Subscriber(broker, READINGS_TOPICS) as receiver, running_agent(site) as agent:
        for restart in range(10):
            before = len(receiver.unique_seqs())
            await wait_until(
                lambda b=before: len(receiver.unique_seqs()) >= b + 15, 15, f"flow before restart {restart}"
            )
            await broker.restart()
        after = len(receiver.unique_seqs())
        await wait_until(lambda: len(receiver.unique_seqs()) >= after + 15, 15, "flow after the last restart")
        target = agent.store.last_seq
        await wait_until(lambda: len(receiver.unique_seqs()) >= target, 20, f"seqs 1..{target} after the restarts")
    result = assert_exactly_once_in_order(receiver.messages, target)
    assert receiver.connections >= 11
    assert connections_in_log(broker) >= 11, "the uplink reconnected after every restart"
    logging.getLogger(__name__).info(
        "%d messages, %d repeated keys, %d overlapping retries",
        len(receiver.messages),
        result.repeated_keys,
        len(result.overlapping),
    )


async def test_a_broker_that_stops_acking_is_detected_and_the_client_rebuilt_within_ack_timeout(
    tmp_path: Path, sensor: WaterLevelSimulator, broker: Mosquitto
) -> None:
    """Acceptance 7: SIGSTOP keeps the connection open while nothing is acknowledged."""
    ack_timeout_s = 1.0
    site = mqtt_site(
        tmp_path,
        sensor_port=sensor.port,
        broker_port=broker.port,
        poll_interval_s=0.05,
        uplink=f"batch_max_readings = 10\nack_timeout_s = {ack_timeout_s}\nkeepalive_s = 60",
    )
    async with Subscriber(broker, READINGS_TOPICS) as receiver, running_agent(site) as agent:
        live = agent.live.uplinks[UPLINK]
        await wait_until(lambda: len(receiver.messages) >= 3, 15, "batches flowing")
        broker.pause()
        try:
            # Detected by the configured ack timeout, whichever of the worker's results says so first.
            detected = f"no PUBACK within {ack_timeout_s:g} s though the connection looked open; client rebuilt"
            await wait_until(lambda: detected in live.last_result, ack_timeout_s + 5, "the missing PUBACK")
            await asyncio.sleep(0.5)  # a reconnect attempt meets the frozen broker too
        finally:
            broker.resume()
        target = agent.store.last_seq
        await wait_until(lambda: len(receiver.unique_seqs()) >= target, 20, "everything after SIGCONT")
    assert_exactly_once_in_order(receiver.messages, target)
    assert connections_in_log(broker) >= 2, "a new connection replaced the stalled one"


async def test_a_refused_publish_keeps_the_cursor_and_the_password_stays_out_of_logs(
    tmp_path: Path, sensor: WaterLevelSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    # The gateway may announce its status but not publish readings: every PUBACK is 0x87.
    acl = f"user {GATEWAY}\ntopic write edgeagent/{GATEWAY}/status\n"
    password_file = tmp_path / "broker.pw"
    password_file.write_text(PASSWORD + "\n")
    caplog.set_level(logging.DEBUG)
    async with Mosquitto(tmp_path / "broker", users={GATEWAY: PASSWORD}, acl=acl) as broker:
        site = mqtt_site(
            tmp_path,
            sensor_port=sensor.port,
            broker_port=broker.port,
            poll_interval_s=0.05,
            uplink=f'username = "{GATEWAY}"\npassword_file = "{password_file}"',
        )
        async with running_agent(site) as agent:
            live = agent.live.uplinks[UPLINK]
            await wait_until(lambda: "refused" in live.last_result, 10, "the refusal")
            assert "MQTT PUBACK 0x87: Not authorized" in live.last_result
    assert telemetry_cursor(tmp_path / "state") == 0, "nothing acknowledged, nothing skipped"
    assert live.readings_sent == 0
    assert PASSWORD not in caplog.text


async def test_a_wrong_password_is_reported_and_sending_waits_for_the_link(tmp_path: Path) -> None:
    password_file = tmp_path / "wrong.pw"
    password_file.write_text("not-the-password")
    async with (
        Mosquitto(tmp_path / "broker", users={GATEWAY: PASSWORD}) as broker,
        started(uplink_cfg(broker.port, username=GATEWAY, password_file=password_file)) as uplink,
    ):
        await wait_until(lambda: uplink.problem is not None, 5, "a refused login")
        batch, payload = a_batch(1)
        with pytest.raises(UplinkRetryLater, match="Not authorized") as refused:
            await uplink.send(batch, payload)
        assert refused.value.link_down


async def test_sending_resumes_as_soon_as_the_broker_is_back(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")  # not started yet: connections are refused
    async with started(uplink_cfg(broker.port)) as uplink:
        await wait_until(lambda: uplink.problem is not None, 5, "a refused connection")
        assert "refused" in (uplink.problem or "").lower()
        batch, payload = a_batch(1)
        with pytest.raises(UplinkRetryLater) as down:
            await uplink.send(batch, payload)
        assert down.value.link_down
        async with broker:
            back = time.monotonic()
            await asyncio.wait_for(uplink.link_up(), 5)
            # Backoff is capped at retry_max (0.5 s here), with jitter below it.
            assert time.monotonic() - back < 1.5
            await uplink.send(batch, payload)
    assert uplink.state is LinkState.CLOSED


async def test_after_a_good_connection_a_lost_link_is_retried_from_the_shortest_delay_again(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")  # not started yet: every attempt is refused
    async with started(uplink_cfg(broker.port, retry_max_ms=2000)) as uplink:
        await wait_until(lambda: uplink.failed_attempts >= 4, 10, "four refused connections")
        async with broker:
            await asyncio.wait_for(uplink.link_up(), 10)
            # Else the next loss would wait up to retry_max before its first retry, and every one after.
            assert uplink.failed_attempts == 0, "the delays start again from retry_min"
        await wait_until(lambda: uplink.failed_attempts >= 1, 10, "the broker gone: a refused reconnect")
        assert uplink.state is not LinkState.CONNECTED


async def test_status_is_retained_online_and_offline_after_close(broker: Mosquitto) -> None:
    async with started(uplink_cfg(broker.port)) as uplink:
        await asyncio.wait_for(uplink.link_up(), 5)
        async with Subscriber(broker, STATUS_TOPIC, client_id="status-watcher") as watcher:
            await wait_until(lambda: len(watcher.messages) >= 1, 5, "the retained status")
            first = watcher.messages[0]
            assert (first.payload, first.retain) == (b"online", True)
            await uplink.close()
            await wait_until(lambda: len(watcher.messages) >= 2, 5, "the offline status")
    assert watcher.messages[-1].payload == b"offline"


async def test_tls_verifies_the_broker_and_refuses_an_unknown_ca_clearly(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    stranger = make_pki(tmp_path / "other", label="other")
    async with Mosquitto(tmp_path / "broker", pki=pki) as broker:
        assert broker.tls_port is not None
        async with started(uplink_cfg(broker.tls_port, tls=True, ca_file=pki.ca_cert)) as uplink:
            assert uplink.target == f"mqtts://127.0.0.1:{broker.tls_port}"
            await asyncio.wait_for(uplink.link_up(), 5)
            await uplink.send(*a_batch(1))
        async with started(uplink_cfg(broker.tls_port, tls=True, ca_file=stranger.ca_cert)) as uplink:
            await wait_until(lambda: uplink.problem is not None, 5, "the failed handshake")
            with pytest.raises(UplinkRetryLater, match="certificate verify failed") as refused:
                await uplink.send(*a_batch(1))
            assert refused.value.link_down and "TLS" in str(refused.value)


async def test_mutual_tls_needs_the_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    async with Mosquitto(tmp_path / "broker", pki=pki, require_certificate=True) as broker:
        assert broker.tls_port is not None
        with_cert = uplink_cfg(
            broker.tls_port, tls=True, ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key
        )
        async with started(with_cert) as uplink:
            await asyncio.wait_for(uplink.link_up(), 5)
            await uplink.send(*a_batch(1))
        async with started(uplink_cfg(broker.tls_port, tls=True, ca_file=pki.ca_cert)) as uplink:
            await wait_until(lambda: uplink.problem is not None, 5, "the refused handshake")
            assert "certificate" in (uplink.problem or "").lower()
            with pytest.raises(UplinkRetryLater) as refused:
                await uplink.send(*a_batch(1))
            assert refused.value.link_down


async def test_a_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    uplink = MqttUplink(uplink_cfg(8883, tls=True, ca_file=tmp_path / "missing.pem"), GATEWAY)
    with pytest.raises(ConfigError, match=r"ca_file: cannot read .*missing\.pem: No such file"):
        await uplink.start()
    await uplink.close()
