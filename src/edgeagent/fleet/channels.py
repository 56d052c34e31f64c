"""How bundles reach a gateway: retained MQTT topics and HTTP polling, both into one pipeline.

MQTT (topics under the channel's ``topic_prefix``)::

    <prefix>/<gateway>/config/bundle        a config bundle for this gateway       retained
    <prefix>/<gateway>/config/trust         a trust bundle for this gateway        retained
    <prefix>/groups/<tag>/config/bundle     a config bundle for a group            retained
    <prefix>/groups/<tag>/config/trust      a trust bundle for a group             retained
    <prefix>/<gateway>/config/reported      this gateway's standing (JSON)         retained, published here

The subscriptions are ordinary ones (MQTT 5 does not deliver retained messages to
shared subscribers) on a clean session of the channel's own client: on every connect
the broker hands over each topic's retained bundle, and the pipeline skips what it has
already decided. The connection is the fleet's own, never the uplink's, so a bundle
that changes (or breaks) an uplink cannot take the fleet channel with it.

HTTP: ``url`` (``{gateway}`` filled in) is fetched every ``poll_interval_s`` (jittered)
with ``If-None-Match``; a 200 body is one bundle or a JSON array of bundles, a 304 is
nothing new. Both channels reconnect or retry with capped, jittered backoff and log a
problem once per change, never in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
from typing import TYPE_CHECKING, Any, cast

from edgeagent.backoff import Backoff
from edgeagent.fleet.bundle import MAX_BUNDLE_BYTES, Rejected, split_bundles
from edgeagent.fleet.settings import FleetHttpConfig, FleetMqttConfig

if TYPE_CHECKING:
    import aiohttp
    import aiomqtt

    from edgeagent.fleet.pipeline import FleetService

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
PUBLISH_TIMEOUT_S = 10.0
# An HTTP body may hold a trust bundle beside a config bundle.
MAX_HTTP_BYTES = 2 * MAX_BUNDLE_BYTES
MAX_QUEUED_MESSAGES = 64


def bundle_topics(prefix: str, gateway: str, groups: list[str]) -> list[str]:
    bases = [f"{prefix}/{gateway}", *(f"{prefix}/groups/{g}" for g in groups)]
    return [f"{base}/config/{kind}" for base in bases for kind in ("bundle", "trust")]


def report_topic(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/config/reported"


class _Problems:
    """A channel's state for the page, and its problems logged once per change."""

    def __init__(self, service: FleetService, channel: str) -> None:
        self.service = service
        self.channel = channel
        self._last: str | None = None

    def up(self, state: str) -> None:
        if self._last is not None:
            log.info("fleet %s channel: %s again", self.channel, state)
        self._last = None
        self.service.channel_state(self.channel, state)

    def down(self, problem: str) -> None:
        if problem != self._last:
            log.warning("fleet %s channel: %s; trying again", self.channel, problem)
            self._last = problem
        self.service.channel_state(self.channel, f"down: {problem}")


class MqttChannel:
    kind = "mqtt"

    def __init__(self, cfg: FleetMqttConfig, gateway: str, groups: list[str], service: FleetService) -> None:
        self.cfg = cfg
        self.service = service
        self.topics = bundle_topics(cfg.topic_prefix, gateway, groups)
        self.report_topic = report_topic(cfg.topic_prefix, gateway)
        self.client_id = cfg.client_id or f"edgeagent-{gateway}-fleet"
        self.target = f"{'mqtts' if cfg.tls else 'mqtt'}://{cfg.host}:{cfg.port}"
        self.problems = _Problems(service, "mqtt")
        self._report: bytes | None = None
        self._report_ready = asyncio.Event()
        self.connections = 0
        service.reporter.listeners.append(self.set_report)

    def set_report(self, doc: dict[str, Any]) -> None:
        self._report = json.dumps(doc, sort_keys=True).encode()
        self._report_ready.set()

    async def run(self) -> None:
        from edgeagent.preflight import mqtt_tls_context, read_secret

        tls: ssl.SSLContext | None = None
        if self.cfg.tls:
            tls = await asyncio.to_thread(mqtt_tls_context, self.cfg)  # type: ignore[arg-type]
        password = None
        if self.cfg.password_file is not None:
            password = await asyncio.to_thread(read_secret, self.cfg, "password_file")  # type: ignore[arg-type]
        backoff = Backoff(self.cfg.reconnect_min_ms / 1000, self.cfg.reconnect_max_ms / 1000)
        while True:
            import aiomqtt

            connected_before = self.connections
            try:
                await self._session(tls, password)
            except (aiomqtt.MqttError, OSError) as exc:
                self.problems.down(f"{self.target}: {exc}")
            if self.connections > connected_before:
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())

    def _client(self, tls: ssl.SSLContext | None, password: str | None) -> aiomqtt.Client:
        import aiomqtt

        from edgeagent.uplinks.mqtt import _ClosingSSLSocket, _PahoLog

        if tls is not None:
            tls.sslsocket_class = _ClosingSSLSocket
        return aiomqtt.Client(
            self.cfg.host,
            self.cfg.port,
            username=self.cfg.username,
            password=password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True,
            keepalive=self.cfg.keepalive_s,
            timeout=CONNECT_TIMEOUT_S,
            tls_context=tls,
            logger=cast(logging.Logger, _PahoLog(log, {})),
            max_queued_incoming_messages=MAX_QUEUED_MESSAGES,
        )

    async def _session(self, tls: ssl.SSLContext | None, password: str | None) -> None:
        async with self._client(tls, password) as client:
            for topic in self.topics:
                await client.subscribe(topic, qos=1, timeout=CONNECT_TIMEOUT_S)
            self.connections += 1
            self.problems.up(f"connected to {self.target}")
            self._report_ready.set()  # the standing goes out on every connection
            tasks = [
                asyncio.create_task(self._receive(client), name="fleet-mqtt-receive"),
                asyncio.create_task(self._publish_reports(client), name="fleet-mqtt-report"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
            for t in done:
                t.result()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not payload or not isinstance(payload, bytes | bytearray):
                continue  # a cleared retained topic
            self.service.submit(bytes(payload), str(message.topic))

    async def _publish_reports(self, client: aiomqtt.Client) -> None:
        while True:
            await self._report_ready.wait()
            self._report_ready.clear()
            if self._report is not None:
                await client.publish(self.report_topic, self._report, qos=1, retain=True, timeout=PUBLISH_TIMEOUT_S)


class HttpChannel:
    kind = "http"

    def __init__(self, cfg: FleetHttpConfig, gateway: str, service: FleetService) -> None:
        self.cfg = cfg
        self.service = service
        self.url = cfg.url_for(gateway)
        self.problems = _Problems(service, "http")
        self.etag: str | None = None
        self.polls = 0
        self._rng = random.Random()

    async def run(self) -> None:
        import aiohttp

        from edgeagent.preflight import read_secret

        headers = {}
        if self.cfg.token_file is not None:
            token = await asyncio.to_thread(read_secret, self.cfg, "token_file")  # type: ignore[arg-type]
            headers["Authorization"] = f"Bearer {token}"
        tls: ssl.SSLContext | bool = True
        if self.cfg.ca_file is not None:
            tls = await asyncio.to_thread(ssl.create_default_context, cafile=str(self.cfg.ca_file))
        backoff = Backoff(1.0, self.cfg.poll_interval_s)
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            while True:
                try:
                    await self._poll(session, tls)
                except (aiohttp.ClientError, TimeoutError, OSError, _HttpProblem) as exc:
                    self.problems.down(f"{self.url}: {exc or type(exc).__name__}")
                    await asyncio.sleep(backoff.next_delay())
                    continue
                backoff.reset()
                await asyncio.sleep(self.cfg.poll_interval_s * self._rng.uniform(0.9, 1.1))

    async def _poll(self, session: aiohttp.ClientSession, tls: ssl.SSLContext | bool) -> None:
        headers = {"If-None-Match": self.etag} if self.etag else {}
        async with session.get(self.url, headers=headers, ssl=tls) as resp:
            self.polls += 1
            if resp.status == 304:
                self.problems.up(f"polling {self.url}")
                return
            if resp.status != 200:
                raise _HttpProblem(f"HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_HTTP_BYTES:
                    raise _HttpProblem(f"the answer is larger than {MAX_HTTP_BYTES} bytes: not read")
            etag = resp.headers.get("ETag")
        self.problems.up(f"polling {self.url}")
        try:
            raws = split_bundles(bytes(body))
        except Rejected:
            raws = [bytes(body)]  # the pipeline refuses it, and says why
        for i, raw in enumerate(raws):
            self.service.submit(raw, f"{self.url}#{i}")
        self.etag = etag


class _HttpProblem(Exception):
    """The fleet URL answered, but not with bundles."""
