"""An HTTP receiver for the tests that records every request as it came and answers as told.

``IngestServer`` is a careful receiver (it decodes, drops duplicates, counts); this one is
the wire seen from the other side: each request's headers, raw body and arrival time,
answered from a queue of scripted answers (200 once the queue is empty), or left hanging.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from edgeagent.sync.senml import decode


@dataclass(slots=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    hang: bool = False  # never answer (until the receiver stops)


@dataclass(slots=True)
class Request:
    at: float
    headers: dict[str, str]
    body: bytes  # inflated by aiohttp when it came with Content-Encoding: gzip
    status: int  # what it was answered, 0 if it was left hanging

    def records(self) -> list[dict[str, Any]]:
        return decode(gzip.decompress(self.body) if self.body[:2] == b"\x1f\x8b" else self.body)

    def seqs(self) -> list[int]:
        return [int(r["seq"]) for r in self.records()]


class Receiver:
    def __init__(self, *answers: Answer, port: int = 0) -> None:
        self.answers: deque[Answer] = deque(answers)
        self.requests: list[Request] = []
        self.port = port
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ingest"

    def acknowledged(self) -> list[Request]:
        return [r for r in self.requests if 200 <= r.status < 300]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        answer = self.answers.popleft() if self.answers else Answer()
        body = await request.read()
        seen = Request(time.monotonic(), dict(request.headers), body, 0 if answer.hang else answer.status)
        self.requests.append(seen)
        if answer.hang:
            await self._released.wait()
            raise web.HTTPServiceUnavailable()
        return web.Response(status=answer.status, text=answer.body, headers=answer.headers)

    async def start(self) -> None:
        self._released.clear()
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/ingest", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
