"""A scripted MQTT 5 broker on loopback: it answers each CONNECT and PUBLISH with the reason code a test chose.

Mosquitto cannot be made to answer a publish with an arbitrary reason code (0x80
"unspecified error", 0x97 "quota exceeded", 0x10 "no matching subscribers"), nor to
refuse a login with 0x86 on demand and say when each attempt came; this peer speaks just
enough of MQTT 5 over a real TCP socket for that: CONNECT/CONNACK, PUBLISH QoS 0 and 1
with PUBACK, PINGREQ/PINGRESP and DISCONNECT. It records every CONNECT (flags, session
expiry, will) and every PUBLISH (topic, QoS, retain, packet id) it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CONNECT, CONNACK, PUBLISH, PUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 12, 13, 14
# Property id -> wire type, for the properties a client may put in CONNECT and its will.
_PROPERTY_TYPES = {
    0x01: "byte",  # payload format indicator
    0x02: "int4",  # message expiry interval
    0x03: "str",  # content type
    0x08: "str",  # response topic
    0x09: "bin",  # correlation data
    0x11: "int4",  # session expiry interval
    0x15: "str",  # authentication method
    0x16: "bin",  # authentication data
    0x17: "byte",  # request problem information
    0x18: "int4",  # will delay interval
    0x19: "byte",  # request response information
    0x21: "int2",  # receive maximum
    0x22: "int2",  # topic alias maximum
    0x26: "pair",  # user property
    0x27: "int4",  # maximum packet size
}


@dataclass(slots=True)
class Connect:
    """What one CONNECT asked for."""

    at: float
    client_id: str
    clean_start: bool
    session_expiry_s: int | None
    will_topic: str | None
    will_payload: bytes | None
    will_qos: int
    will_retain: bool
    will_delay_s: int | None
    username: str | None


@dataclass(slots=True)
class Publish:
    topic: str
    qos: int
    retain: bool
    payload: bytes
    answered: int | None  # the PUBACK reason code sent, None for QoS 0
    content_type: str | None = None
    payload_format: int | None = None
    user: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ScriptedBroker:
    """``connack`` answers every CONNECT; ``puback(topic)`` gives the reason code for a PUBLISH
    (a negative one: the PUBLISH is never answered)."""

    connack: int = 0x00
    puback: Callable[[str], int] = field(default=lambda topic: 0x00)
    host: str = "127.0.0.1"
    port: int = 0
    connects: list[Connect] = field(default_factory=list)
    publishes: list[Publish] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> ScriptedBroker:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def readings(self) -> list[Publish]:
        return [p for p in self.publishes if "/readings/" in p.topic]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(reader, writer), name="scripted-broker-connection")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                kind, flags, body = await _read_packet(reader)
                if kind == CONNECT:
                    self.connects.append(_parse_connect(body))
                    writer.write(bytes([CONNACK << 4, 3, 0, self.connack, 0]))
                    if self.connack >= 0x80:
                        await writer.drain()
                        return
                elif kind == PUBLISH:
                    self._publish(flags, body, writer)
                elif kind == PINGREQ:
                    writer.write(bytes([PINGRESP << 4, 0]))
                elif kind == DISCONNECT:
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _publish(self, flags: int, body: bytes, writer: asyncio.StreamWriter) -> None:
        qos, retain = (flags >> 1) & 3, bool(flags & 1)
        topic, i = _string(body, 0)
        packet_id = None
        if qos:
            (packet_id,) = struct.unpack_from(">H", body, i)
            i += 2
        props, i = _properties(body, i)
        payload = body[i:]
        code = self.puback(topic) if qos else None
        answered = code if code is not None and code >= 0 else None  # a negative code: never answered
        user = dict(props.get(0x26, []))  # type: ignore[call-overload]
        publish = Publish(topic, qos, retain, payload, answered, props.get(0x03), props.get(0x01), user)  # type: ignore[arg-type]
        self.publishes.append(publish)
        if packet_id is not None and answered is not None:
            writer.write(bytes([PUBACK << 4, 4]) + struct.pack(">HBB", packet_id, answered, 0))


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return first >> 4, first & 0x0F, await reader.readexactly(length)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _string(data: bytes, i: int) -> tuple[str, int]:
    (n,) = struct.unpack_from(">H", data, i)
    return data[i + 2 : i + 2 + n].decode(), i + 2 + n


def _binary(data: bytes, i: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from(">H", data, i)
    return data[i + 2 : i + 2 + n], i + 2 + n


def _properties(data: bytes, i: int) -> tuple[dict[int, object], int]:
    length, i = _varint(data, i)
    end, props = i + length, {}
    while i < end:
        pid = data[i]
        i += 1
        kind = _PROPERTY_TYPES[pid]
        value: object
        if kind == "byte":
            value, i = data[i], i + 1
        elif kind == "int2":
            (value,), i = struct.unpack_from(">H", data, i), i + 2
        elif kind == "int4":
            (value,), i = struct.unpack_from(">I", data, i), i + 4
        elif kind == "str":
            value, i = _string(data, i)
        elif kind == "bin":
            value, i = _binary(data, i)
        else:
            key, i = _string(data, i)
            val, i = _string(data, i)
            pairs = props.setdefault(pid, [])
            assert isinstance(pairs, list)
            pairs.append((key, val))
            continue
        props[pid] = value
    return props, end


def _parse_connect(body: bytes) -> Connect:
    name, i = _string(body, 0)
    assert name == "MQTT" and body[i] == 5, "an MQTT 5 CONNECT"
    flags = body[i + 1]
    props, i = _properties(body, i + 4)  # version, flags, keep alive
    client_id, i = _string(body, i)
    will_topic = will_payload = None
    will_delay = None
    if flags & 0x04:
        will_props, i = _properties(body, i)
        will_delay = will_props.get(0x18)
        will_topic, i = _string(body, i)
        will_payload, i = _binary(body, i)
    username = None
    if flags & 0x80:
        username, i = _string(body, i)
    return Connect(
        at=time.monotonic(),
        client_id=client_id,
        clean_start=bool(flags & 0x02),
        session_expiry_s=props.get(0x11),  # type: ignore[arg-type]
        will_topic=will_topic,
        will_payload=will_payload,
        will_qos=(flags >> 3) & 3,
        will_retain=bool(flags & 0x20),
        will_delay_s=will_delay,  # type: ignore[arg-type]
        username=username,
    )
