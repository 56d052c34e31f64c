"""A simulated RS-485-to-Ethernet converter: a Modbus TCP proxy that can go mute.

Real converters (and the NAT or firewall in front of them) fail in ways a plain server
does not: the TCP connection stays open while nothing comes back. ``ConverterProxy``
forwards whole Modbus TCP frames between the agent and a real pymodbus server, and on
command it

- ``mute_open_connections()``: every connection open now swallows whatever arrives on
  it, in both directions, and stays open; connections made later work normally (a stuck
  converter or a dropped NAT entry, which a new connection cures); with ``mute_new``
  set, new connections are accepted and then carry nothing either (a converter that
  stays stuck);
- ``dead_units``: requests for these unit ids are swallowed on every connection (a unit
  that never answers behind a converter whose other units do).

Each connection counts the requests it carried and the answers it delivered, so a test
can tell exactly how many requests went unanswered on it.
"""

from __future__ import annotations

import asyncio
import struct
from collections import Counter
from dataclasses import dataclass, field

from edgeagent.sim.serial_pty import BackgroundSimulator

MBAP_HEADER = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id


@dataclass(slots=True)
class Link:
    """One accepted connection and what went through it."""

    number: int
    muted: bool = False
    requests: int = 0
    answers: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def unanswered(self) -> int:
        return self.requests - self.answers


class ConverterProxy(BackgroundSimulator):
    """A Modbus TCP converter in front of ``upstream_host:upstream_port`` on a loopback port."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        super().__init__()
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.links: list[Link] = []
        self.dead_units: set[int] = set()
        self.mute_new = False  # connections accepted from now on are mute from the start
        self.swallowed_by_unit: Counter[int] = Counter()  # requests dropped for a dead unit
        self._server: asyncio.Server | None = None

    @property
    def accepted(self) -> int:
        """Connections accepted so far (each dial of the agent's transport is one)."""
        return len(self.links)

    def mute_open_connections(self) -> None:
        """From now on, the connections open now carry nothing, either way; they stay open."""
        for link in self.links:
            if not link.closed.is_set():
                link.muted = True

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await super().stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = Link(len(self.links) + 1, muted=self.mute_new)
        self.links.append(link)
        # The pumps run as the simulator's own tasks, so stop() ends them (asyncio.Server
        # in 3.11 leaves open connections alone when it closes).
        self._spawn(self._serve(link, reader, writer), name=f"converter-link-{link.number}")

    async def _serve(self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            to_unit = asyncio.create_task(self._requests(link, reader, up_writer), name=f"link-{link.number}-up")
            to_agent = asyncio.create_task(self._answers(link, up_reader, writer), name=f"link-{link.number}-down")
            try:
                await asyncio.wait({to_unit, to_agent}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (to_unit, to_agent):
                    task.cancel()
                await asyncio.gather(to_unit, to_agent, return_exceptions=True)
        finally:
            link.closed.set()
            writer.close()
            if up_writer is not None:
                up_writer.close()

    async def _requests(self, link: Link, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter) -> None:
        while (frame := await _read_frame(reader)) is not None:
            link.requests += 1
            unit = frame[6]
            if unit in self.dead_units:
                self.swallowed_by_unit[unit] += 1
                continue
            if link.muted:
                continue
            upstream.write(frame)
            await upstream.drain()

    async def _answers(self, link: Link, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (frame := await _read_frame(upstream)) is not None:
            if link.muted:
                continue
            link.answers += 1
            writer.write(frame)
            await writer.drain()


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One whole Modbus TCP frame (MBAP header and PDU), or None at the end of the stream."""
    try:
        header = await reader.readexactly(MBAP_HEADER.size)
        _, _, length, _ = MBAP_HEADER.unpack(header)
        if length < 2:  # not Modbus: the stream cannot be framed any further
            return None
        return header + await reader.readexactly(length - 1)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
