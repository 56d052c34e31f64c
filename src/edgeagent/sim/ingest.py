"""A local ingest endpoint: accepts SenML batches, drops duplicates, counts what arrived.

It stands in for the road-network platform in the demo and the tests. It behaves as a
careful receiver should: it checks the token (when one is set), decompresses, parses
SenML, and keeps each (gateway, buffer id, seq) once, however often a batch is sent again. Faults
can be queued to exercise the sender: an HTTP status (with Retry-After), a hang, or a
reset connection.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import hmac
import json
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from edgeagent.sync.senml import decode


@dataclass(slots=True)
class Fault:
    """What to do with one request instead of accepting it."""

    kind: str  # "status", "hang", "reset"
    status: int = 503
    retry_after: str | None = None
    # Retry-After as an HTTP date this many seconds after the answer's own Date header
    # (both written when answering), as a receiver behind a load balancer sends it.
    retry_after_date_in_s: float | None = None
    body: str = "fault injected"


@dataclass(slots=True)
class IngestStats:
    requests: int = 0
    batches_accepted: int = 0
    readings_received: int = 0
    duplicates: int = 0
    arrival_times: list[float] = field(default_factory=list)


class IngestServer:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.records: dict[tuple[str, str, int], dict[str, Any]] = {}
        # Every accepted pack as sent (records unresolved: bt, t, tq as on the wire), in arrival order.
        self.packs: list[list[dict[str, Any]]] = []
        self.arrival_order: list[int] = []
        self.stats = IngestStats()
        self.faults: deque[Fault] = deque()
        self.received = asyncio.Event()
        self.first_request_time: float | None = None
        self.request_log: list[tuple[float, int]] = []  # (arrival, status answered; 0 = hang/reset)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/ingest"

    def seqs(self, gateway: str | None = None, buffer_id: str | None = None) -> list[int]:
        """Every distinct sequence number received (of one gateway, one buffer), sorted."""
        return sorted(
            s for g, b, s in self.records if (gateway is None or g == gateway) and (buffer_id is None or b == buffer_id)
        )

    def device_records(self, prefix: str = "") -> list[dict[str, Any]]:
        """Measurements of field devices, in (buffer, seq) order: not the gateway's own
        readings, nor a device's state events."""
        return [
            rec
            for _, rec in sorted(self.records.items())
            if rec["n"].split("/", 2)[1] != "gateway"
            and not rec["n"].endswith("/state")
            and rec["n"].split("/", 1)[1].startswith(prefix)
        ]

    def gaps_after_status(self, status: int) -> list[float]:
        """Seconds from each answer with ``status`` to the sender's next request."""
        log = self.request_log
        return [log[i + 1][0] - t for i, (t, s) in enumerate(log[:-1]) if s == status]

    async def _ingest(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        now = time.monotonic()
        if self.first_request_time is None:
            self.first_request_time = now
        if self.faults:
            fault = self.faults.popleft()
            self.request_log.append((now, fault.status if fault.kind == "status" else 0))
            if fault.kind == "hang":
                await self._closing.wait()  # never answered; released at shutdown
            if fault.kind == "reset":
                if request.transport is not None:
                    request.transport.abort()
                raise web.HTTPServiceUnavailable()
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            if fault.retry_after_date_in_s is not None:
                answered = time.time()
                headers["Date"] = email.utils.formatdate(answered, usegmt=True)
                headers["Retry-After"] = email.utils.formatdate(answered + fault.retry_after_date_in_s, usegmt=True)
            return web.Response(status=fault.status, text=fault.body, headers=headers)
        if self.token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return web.Response(status=401, text="bad or missing token")
        gateway = request.headers.get("X-Edgeagent-Gateway", "")
        raw = await request.read()
        try:
            # aiohttp inflates a gzip'd request body itself; inflate only what is still gzip.
            body = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
            records = decode(body)
            pack = json.loads(body)
        except (OSError, EOFError, zlib.error, ValueError) as exc:
            return web.Response(status=400, text=f"cannot decode batch: {exc}")
        for rec in records:
            seq = rec.get("seq")
            if not isinstance(seq, int):
                return web.Response(status=400, text="record without seq")
            key = (gateway, str(rec.get("bid", "")), seq)
            if key in self.records:
                self.stats.duplicates += 1
                continue
            self.records[key] = rec
            self.arrival_order.append(seq)
            self.stats.readings_received += 1
        self.packs.append(pack)
        self.stats.batches_accepted += 1
        self.request_log.append((now, 200))
        self.stats.arrival_times.append(time.monotonic())
        self.received.set()
        return web.json_response({"accepted": len(records)})

    async def _stats(self, request: web.Request) -> web.Response:
        s = self.stats
        return web.json_response(
            {
                "requests": s.requests,
                "batches_accepted": s.batches_accepted,
                "readings_received": s.readings_received,
                "duplicates_dropped": s.duplicates,
            }
        )

    async def start(self) -> int:
        self._closing.clear()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/ingest", self._ingest)
        app.router.add_get("/stats", self._stats)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> IngestServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
