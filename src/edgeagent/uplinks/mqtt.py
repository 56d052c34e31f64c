"""MQTT 5 uplink: gzip'd SenML batches published with QoS 1 on a persistent session (aiomqtt).

Topics (docs/uplinks.md says what a receiver sees):

    <topic_prefix>/<gateway>/readings/<class>   one batch per message; class: alarm, event, telemetry
    <topic_prefix>/<gateway>/status             retained: "online" once connected, "offline" as the
                                                Will (after WILL_DELAY_S) and on a clean stop

One background task (``mqtt:<name>``) owns the connection, a small state machine:

    DISCONNECTED --> CONNECTING --(CONNACK, birth acknowledged)--> CONNECTED
         ^               |                                            |
         +-- backoff <---+ refused, unreachable, TLS or auth error    |
         +-- spread  <------ connection lost, or no PUBACK in time <--+

Each connection is a new client object, so nothing a dead connection held (paho's
queue of unacknowledged messages) survives into the next one. Reconnects wait
``Backoff`` delays (capped exponential, full jitter, the destination's retry limits),
an authentication or certificate failure waits near the maximum at once, and the first
attempt after a loss is spread at random over up to RECONNECT_SPREAD_S, because a
broker restart drops every gateway of a fleet in the same instant.

``send`` publishes only while CONNECTED (so nothing queues while the link is down), one
message at a time, and returns only when the broker's PUBACK carries a success code:
aiomqtt reports a PUBACK as success whatever its reason code, so the code is read
here. No PUBACK within ``ack_timeout_s`` while the socket still looks open (a hung
broker, a dead path that no RST reports) tears the client down and rebuilds it.

Errors are translated here and nowhere else: aiomqtt, paho, ``ssl`` and socket errors
become ``UplinkRetryLater`` (``link_down=True`` when there is no usable connection) or,
for a publish the broker refused (PUBACK reason code >= 0x80), ``PublishRefused``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import random
import socket
import ssl
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeagent.backoff import Backoff
from edgeagent.config import MqttUplinkConfig
from edgeagent.errors import UplinkRejected, UplinkRetryLater
from edgeagent.preflight import mqtt_tls_context, read_secret
from edgeagent.store import Batch
from edgeagent.sync.senml import CONTENT_TYPE
from edgeagent.uplinks.common import idempotency_key

log = logging.getLogger(__name__)

# Longest wait for CONNACK (and for a clean DISCONNECT); paho adds up to 5 s for TCP and TLS.
CONNECT_TIMEOUT_S = 10.0
# At close: how long the "offline" status and the DISCONNECT may take before the socket is dropped.
CLOSE_TIMEOUT_S = 2.0
# After an abort, how long to wait for paho to notice the closed socket and let go of it.
ABORT_WAIT_S = 1.0
# The first reconnect after a loss is drawn from [0, min(this, retry_max)] seconds.
RECONNECT_SPREAD_S = 10.0
# The broker publishes the Will only if the session is not resumed within this time, so a
# quick rebuild does not flap the status topic to "offline" and back.
WILL_DELAY_S = 10
# Hard cap on messages paho may hold at once (the batch in flight and a status message);
# a publish beyond it fails instead of queueing, so memory cannot grow with the backlog.
MAX_CLIENT_MESSAGES = 4
ONLINE = b"online"
OFFLINE = b"offline"
# CONNACK reason codes that mean "fix the credentials or the certificate", not "try again soon".
AUTH_REASON_CODES = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})
# PUBACK reason codes >= 0x80 that a later retry may clear (quota exceeded, packet id in use).
TRANSIENT_PUBACK_CODES = frozenset({0x91, 0x97})
UNSPECIFIED_ERROR = 0x80


class LinkState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class PublishRefused(UplinkRejected):
    """The broker refused a publish (PUBACK reason code >= 0x80); ``status`` is that code."""

    def __str__(self) -> str:
        return f"MQTT PUBACK 0x{self.status:02X}: {self.body}"


class _ConnectFailed(Exception):
    """A connection attempt failed; ``auth`` says retrying soon will not help."""

    def __init__(self, reason: str, *, auth: bool = False) -> None:
        self.auth = auth
        super().__init__(reason)


class _PahoLog(logging.LoggerAdapter[logging.Logger]):
    """paho's and aiomqtt's messages, all at DEBUG: the uplink itself reports the link's
    state once, at the right level. The last error is kept as the reason for a loss
    (e.g. the TLS alert of a broker that wants a client certificate)."""

    last_error: str | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR:
            self.last_error = str(msg) % args if args else str(msg)
        super().log(logging.DEBUG, msg, *args, **kwargs)


class _Client(aiomqtt.Client):
    """aiomqtt's client (2.5) plus what this uplink needs and it lacks: the reason codes of
    PUBACK and CONNACK, a future that ends with the connection (aiomqtt's own is awaited
    only by its message iterator, and a publish in flight would otherwise wait out its
    timeout), and an abort that does not wait for a peer that may be hung. Every use of
    aiomqtt's internals is in this class."""

    def __init__(self, *args: Any, paho_log: _PahoLog, **kwargs: Any) -> None:
        super().__init__(*args, logger=cast(logging.Logger, paho_log), **kwargs)
        self.paho_log = paho_log
        self.connack: ReasonCode | None = None
        self.last_puback: ReasonCode | None = None
        self.ended: asyncio.Future[str] = self._loop.create_future()
        self._socket_closed = asyncio.Event()

    def end(self, reason: str) -> None:
        """Mark this connection finished (lost, rebuilt or closing); the first reason wins."""
        if not self.ended.done():
            self.ended.set_result(reason)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        self.connack = reason_code
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        # One publish is in flight at a time, so the last code seen belongs to it.
        self.last_puback = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        super()._on_disconnect(client, userdata, flags, reason_code, properties)
        disconnected = self._disconnected
        if disconnected.done() and not disconnected.cancelled():
            disconnected.exception()  # retrieved here, or asyncio logs it as never retrieved
        if flags.is_disconnect_packet_from_server:
            self.end(f"broker closed the connection: {reason_code}")
        elif self.paho_log.last_error:
            self.end(f"connection lost: {self.paho_log.last_error}")
        elif reason_code.value == UNSPECIFIED_ERROR:  # paho's word for an orderly end of stream
            self.end("connection closed by the broker")
        else:
            self.end(f"connection lost: {reason_code}")

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        super()._on_socket_close(client, userdata, sock)
        self._loop.call_soon_threadsafe(self._socket_closed.set)

    async def abort(self) -> None:
        """Drop the connection without a handshake: shut the socket down, then let paho
        see end-of-file and release it (reader, timers, futures) by its normal path."""
        sock = self._client.socket()
        if sock is None:
            return
        with contextlib.suppress(OSError):
            # The plain socket's shutdown, so that a TLS socket still reads what it holds.
            socket.socket.shutdown(cast(socket.socket, sock), socket.SHUT_RDWR)
        try:
            await asyncio.wait_for(self._socket_closed.wait(), ABORT_WAIT_S)
        except TimeoutError:
            log.debug("paho did not release an aborted socket within %s s", ABORT_WAIT_S)


class _ClosingSSLSocket(ssl.SSLSocket):
    """A TLS socket that closes itself when its handshake fails: paho 2.2 drops it open
    (an fd leak on every refused certificate), and ``SSLContext.sslsocket_class`` is the
    documented way to choose the class ``wrap_socket`` builds."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError:
            self.close()
            raise


def _refused(code: ReasonCode | None) -> _ConnectFailed:
    """A negative CONNACK; bad credentials, a ban or a refused client id wait near the maximum."""
    if code is None:
        return _ConnectFailed("broker refused the connection")
    return _ConnectFailed(f"broker refused: {code}", auth=code.value in AUTH_REASON_CODES)


def _describe(exc: BaseException) -> str:
    """A short, stable description of a connect failure, without library class names."""
    cause = exc.__context__ if isinstance(exc, aiomqtt.MqttError) and exc.__context__ is not None else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS: {cause.verify_message or cause.reason} (certificate verify failed)"
    if isinstance(cause, ssl.SSLError):
        return f"TLS: {cause.reason or cause}"
    if isinstance(cause, TimeoutError):
        return "timed out waiting for the broker"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause) or type(cause).__name__


def publish_properties(gateway_id: str, batch: Batch) -> Properties:
    """The MQTT 5 properties of a batch: what HTTP carries in headers."""
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = CONTENT_TYPE
    props.PayloadFormatIndicator = 0  # bytes (gzip), not UTF-8 text
    props.UserProperty = [
        ("idempotency-key", idempotency_key(gateway_id, batch)),
        ("buffer-id", batch.buffer_id),
        ("first-seq", str(batch.first_seq)),
        ("last-seq", str(batch.last_seq)),
        ("count", str(len(batch.readings))),
        ("content-encoding", "gzip"),
    ]
    return props


class MqttUplink:
    def __init__(self, cfg: MqttUplinkConfig, gateway_id: str) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.gateway_id = gateway_id
        self.target = f"{'mqtts' if cfg.tls else 'mqtt'}://{cfg.host}:{cfg.port}"
        self.client_id = cfg.client_id or f"edgeagent-{gateway_id}-{cfg.name}"
        self.topic_base = f"{cfg.topic_prefix}/{gateway_id}"
        self.status_topic = f"{self.topic_base}/status"
        self.state = LinkState.DISCONNECTED
        self.problem: str | None = None  # why the link is down, while it is
        self.connections = 0  # successful connections so far (a rebuild adds one)
        self._tls: ssl.SSLContext | None = None
        self._password: str | None = None
        self._client: _Client | None = None
        self._up = asyncio.Event()
        self._publish_lock = asyncio.Lock()
        self._stop: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._reported: str | None = None
        self._rng = random.Random()
        self._backoff: Backoff | None = None

    @property
    def failed_attempts(self) -> int:
        """Connection attempts failed in a row since the last good connection: the retry delay grows from it."""
        return self._backoff.failures if self._backoff is not None else 0

    # -- life cycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Load credentials and TLS material, then connect in the background (never blocks on the broker)."""
        if self.cfg.tls:
            self._tls = await asyncio.to_thread(self._load_tls)
        if self.cfg.password_file is not None:
            self._password = await asyncio.to_thread(self._load_password)
        self._stop = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name=f"mqtt:{self.name}")

    # Both checked by preflight before start; loaded again here, so a change since is refused the same way.
    def _load_tls(self) -> ssl.SSLContext:
        ctx = mqtt_tls_context(self.cfg)
        ctx.sslsocket_class = _ClosingSSLSocket
        return ctx

    def _load_password(self) -> str:
        return read_secret(self.cfg, "password_file")

    async def close(self) -> None:
        """Say "offline", disconnect cleanly if the broker answers, and stop the connection task.

        A connection attempt in progress cannot be cut short (part of it runs in a thread),
        so close may wait for it: at worst CLOSE_TIMEOUT_S + CONNECT_TIMEOUT_S + paho's 5 s.
        """
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=CLOSE_TIMEOUT_S)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.state = LinkState.CLOSED

    async def link_up(self) -> None:
        await self._up.wait()

    # -- the connection state machine ----------------------------------------------

    def _new_client(self) -> _Client:
        connect = Properties(PacketTypes.CONNECT)
        connect.SessionExpiryInterval = self.cfg.session_expiry_s
        will_props = Properties(PacketTypes.WILLMESSAGE)
        will_props.WillDelayInterval = WILL_DELAY_S
        return _Client(
            self.cfg.host,
            self.cfg.port,
            paho_log=_PahoLog(log, {}),
            username=self.cfg.username,
            password=self._password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=connect,
            will=aiomqtt.Will(self.status_topic, OFFLINE, qos=1, retain=True, properties=will_props),
            keepalive=self.cfg.keepalive_s,
            timeout=CONNECT_TIMEOUT_S,
            tls_context=self._tls,
            max_queued_outgoing_messages=MAX_CLIENT_MESSAGES,
        )

    async def _run(self) -> None:
        stop = self._stop
        assert stop is not None
        backoff = self._backoff = Backoff(self.cfg.retry_min_ms / 1000, self.cfg.retry_max_ms / 1000)
        delay = 0.0
        try:
            while True:
                if delay > 0:
                    await asyncio.wait({stop}, timeout=delay)
                if stop.done():
                    break
                self.state = LinkState.CONNECTING
                client = self._new_client()
                try:
                    await self._open(client)
                except _ConnectFailed as exc:
                    self._down(f"cannot connect to {self.target}: {exc}")
                    auth_delay = self._rng.uniform(backoff.maximum_s / 2, backoff.maximum_s)
                    delay = auth_delay if exc.auth else backoff.next_delay()
                    continue
                backoff.reset()
                try:
                    self._connected(client)
                    await asyncio.wait({client.ended, stop}, return_when=asyncio.FIRST_COMPLETED)
                    self._up.clear()
                    self._client = None
                    if stop.done():
                        await self._goodbye(client)
                        break
                    self._down(client.ended.result())
                finally:
                    self._up.clear()
                    self._client = None
                    await client.abort()
                delay = self._rng.uniform(0.0, min(RECONNECT_SPREAD_S, backoff.maximum_s))
        finally:
            self.state = LinkState.CLOSED if stop.done() else LinkState.DISCONNECTED

    async def _open(self, client: _Client) -> None:
        """Connect and publish the retained "online"; on any failure leave nothing open."""
        attempt = asyncio.create_task(client.__aenter__(), name=f"mqtt-connect:{self.name}")
        try:
            # CONNACK, or the connection's end (e.g. a TLS alert after the handshake), first.
            await asyncio.wait({attempt, client.ended}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Part of the attempt runs in a thread that cannot be cancelled: let it finish, then drop it.
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                await attempt
            await client.abort()
            raise
        try:
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError, OSError):
                    await attempt
                if client.connack is not None and client.connack.is_failure:  # the broker hung up after saying why
                    raise _refused(client.connack)
                raise _ConnectFailed(client.ended.result())
            try:
                attempt.result()
            except MqttConnectError as exc:
                raise _refused(client.connack) from exc
            except (aiomqtt.MqttError, OSError) as exc:
                cause = exc.__context__ if isinstance(exc, aiomqtt.MqttError) else exc
                raise _ConnectFailed(_describe(exc), auth=isinstance(cause, ssl.SSLCertVerificationError)) from exc
            try:
                await self._publish(client, self.status_topic, ONLINE, None, retain=True)
            except (UplinkRetryLater, UplinkRejected) as exc:
                raise _ConnectFailed(f"status message not acknowledged: {exc}") from exc
        except _ConnectFailed:
            await client.abort()
            raise

    def _connected(self, client: _Client) -> None:
        self.connections += 1
        self._client = client
        self.state = LinkState.CONNECTED
        self.problem = None
        if self._reported is not None:
            log.info("uplink %s: connected to %s again", self.name, self.target)
        elif self.connections == 1:
            log.info("uplink %s: connected to %s as %s", self.name, self.target, self.client_id)
        self._reported = None
        self._up.set()

    def _down(self, reason: str) -> None:
        """Record why the link is down; warn when the reason changes, else only debug (no storms)."""
        self.state = LinkState.DISCONNECTED
        self.problem = reason
        if reason != self._reported:
            log.warning("uplink %s: %s; reconnecting", self.name, reason)
            self._reported = reason
        else:
            log.debug("uplink %s: %s", self.name, reason)

    async def _goodbye(self, client: _Client) -> None:
        """Retained "offline", then a clean DISCONNECT (so the Will is not published too)."""
        with contextlib.suppress(UplinkRetryLater, UplinkRejected):
            await self._publish(client, self.status_topic, OFFLINE, None, retain=True, timeout_s=CLOSE_TIMEOUT_S)
        if not client.ended.done():
            client.end("closing")
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                await asyncio.wait_for(client.__aexit__(None, None, None), CLOSE_TIMEOUT_S)

    # -- publishing ----------------------------------------------------------------

    async def send(self, batch: Batch, payload: bytes) -> None:
        client = self._client
        if client is None or client.ended.done():
            raise UplinkRetryLater(f"not connected to {self.target}: {self.problem or 'connecting'}", link_down=True)
        topic = f"{self.topic_base}/readings/{batch.priority.name.lower()}"
        await self._publish(client, topic, payload, publish_properties(self.gateway_id, batch))

    async def _publish(
        self,
        client: _Client,
        topic: str,
        payload: bytes,
        properties: Properties | None,
        *,
        retain: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        """Publish with QoS 1 and return once a success PUBACK arrives; one at a time."""
        ack_timeout_s = self.cfg.ack_timeout_s if timeout_s is None else timeout_s
        async with self._publish_lock:
            if client.ended.done():
                raise UplinkRetryLater(f"{client.ended.result()} (before publishing)", link_down=True)
            client.last_puback = None
            publish = asyncio.create_task(
                client.publish(topic, payload, qos=1, retain=retain, properties=properties, timeout=math.inf),
                name=f"mqtt-publish:{self.name}",
            )
            try:
                done, _ = await asyncio.wait(
                    {publish, client.ended}, timeout=ack_timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                if not publish.done():
                    publish.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await publish
            if publish in done:
                try:
                    publish.result()
                except aiomqtt.MqttError as exc:
                    raise UplinkRetryLater(f"publish failed: {exc}", link_down=True) from exc
            elif client.ended.done():
                raise UplinkRetryLater(f"{client.ended.result()} before the PUBACK", link_down=True)
            else:
                reason = f"no PUBACK within {ack_timeout_s:g} s though the connection looked open; client rebuilt"
                client.end(reason)
                raise UplinkRetryLater(reason, link_down=True)
        code = client.last_puback
        if code is not None and code.is_failure:
            if code.value in TRANSIENT_PUBACK_CODES:
                raise UplinkRetryLater(f"broker answered PUBACK 0x{code.value:02X} ({code}) on {topic}")
            raise PublishRefused(code.value, f"{code} on {topic}")
