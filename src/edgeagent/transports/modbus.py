"""Modbus over TCP and RTU: one pymodbus client per bus, its errors translated into ours.

The transport owns the connection (a socket, or a serial port) and nothing else: it
knows no profiles, readings or schedules. Reconnects are driven from here with capped,
jittered backoff; pymodbus's own background reconnect and retries are switched off so
that exactly one place decides when to dial again and when to try a request again (the
bus scheduler). Nothing above this module sees a pymodbus or pyserial exception.

A connection can also be given up while it looks open: the bus scheduler, which sees
every unit's answers, calls ``reopen()`` when nothing on it answers any more. Dialling
does not prove such a connection works (a stuck converter accepts and then says
nothing), so after a reopen the backoff starts over only with the first answer, and a
converter that stays mute is dialled ever more slowly.

Each request has its own timeout (devices on one bus answer at different speeds); it
is enforced here around pymodbus's call, which is created with the slowest of them. A
late answer to a request that timed out is dropped by pymodbus, which matches answers
to the unit id (RTU) or transaction id (TCP) it is waiting for.

On a serial line the transport also keeps the silence the standard requires between
frames (3.5 characters by default, or what the bus config asks for).
"""

from __future__ import annotations

import asyncio
import logging
import termios
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import serial
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse

from edgeagent.errors import DeviceException, DeviceTimeout, DeviceUnreachable
from edgeagent.protocols.modbus import Function
from edgeagent.protocols.modbus_rtu import bits_per_char, frame_gap_s
from edgeagent.transports._gate import ReopenGate
from edgeagent.transports.serial import describe_serial_error

if TYPE_CHECKING:
    from pymodbus.client.base import ModbusBaseClient
    from pymodbus.pdu import ModbusPDU

log = logging.getLogger(__name__)

# Raw frames kept for the status page's device view: the last few, each cut to an RTU ADU's size.
FRAMES_KEPT = 8
MAX_FRAME_BYTES = 256

_Request = Callable[["ModbusBaseClient"], Awaitable["ModbusPDU"]]

EXCEPTION_CODES: dict[int, str] = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "device failure",
    0x05: "acknowledge",
    0x06: "device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target failed to respond",
}


class ModbusTransport:
    """What TCP and RTU share: dialling with backoff, requests, error translation."""

    dial_verb = "open"

    def __init__(
        self,
        *,
        timeout_s: float,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        inter_frame_s: float = 0.0,
    ) -> None:
        self.timeout_s = timeout_s
        self.inter_frame_s = inter_frame_s
        self._client: ModbusBaseClient | None = None
        self._gate = ReopenGate(reconnect_min_s, reconnect_max_s)
        self._quiet_from = 0.0
        self._unproven = False  # reopened for silence, and nothing has answered since
        self.frames: deque[tuple[float, str, str]] = deque(maxlen=FRAMES_KEPT)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """pymodbus's packet hook: keep each frame as hex (the bus is one transaction at a time)."""
        self.frames.append((time.time(), "tx" if sending else "rx", data[:MAX_FRAME_BYTES].hex(" ")))
        return data

    @property
    def label(self) -> str:
        raise NotImplementedError

    def _make_client(self) -> ModbusBaseClient:
        raise NotImplementedError

    def _dial_error(self) -> str:
        """Why the last dial failed, as precisely as can be found out."""
        return "connection refused or timed out"

    async def _connected(self) -> ModbusBaseClient:
        if self._client is not None and self._client.connected:
            return self._client
        if wait := self._gate.wait_left():
            raise DeviceUnreachable(f"{self.label} unreachable ({self._gate.last_error}); next try in {wait:.1f} s")
        await self.close()
        client = self._make_client()
        try:
            async with asyncio.timeout(self.timeout_s + 1):
                ok = await client.connect()
        except (TimeoutError, OSError, ModbusException, termios.error) as exc:
            # termios.error: a serial port that refuses its settings (pyserial lets it through).
            ok = False
            error = describe_serial_error(exc) if isinstance(exc, termios.error) else str(exc)
            error = error or type(exc).__name__
        else:
            error = "" if ok else self._dial_error()
        if not ok:
            client.close()
            self._gate.failed(error)
            raise DeviceUnreachable(f"cannot {self.dial_verb} {self.label}: {error}")
        if not self._unproven:
            self._gate.succeeded()
        self._client = client
        return client

    async def reopen(self, reason: str) -> None:
        """Drop a connection that answers nothing; it is dialled again after the backoff."""
        await self.close()
        self._gate.failed(reason)
        self._unproven = True

    async def _quiet(self) -> None:
        """Keep the required silence after the previous transaction."""
        wait = self._quiet_from - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _call(self, what: str, unit_id: int, timeout_s: float | None, request: _Request) -> ModbusPDU:
        """Run one pymodbus request with our timeout, inter-frame silence and error mapping."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        client = await self._connected()
        await self._quiet()
        try:
            async with asyncio.timeout(limit):
                rr = await request(client)
        except (TimeoutError, ModbusIOException) as exc:
            raise DeviceTimeout(f"no answer from unit {unit_id} at {self.label} within {limit:g} s") from exc
        except ConnectionException as exc:
            await self.close()
            raise DeviceUnreachable(f"connection to {self.label} lost: {exc}") from exc
        except ModbusException as exc:
            await self.close()
            raise DeviceTimeout(f"unit {unit_id} at {self.label}: {exc}") from exc
        finally:
            self._quiet_from = time.monotonic() + self.inter_frame_s
        if self._unproven:  # the first answer since a reopen for silence
            self._unproven = False
            self._gate.succeeded()
        if isinstance(rr, ExceptionResponse) or rr.isError():
            code = getattr(rr, "exception_code", 0)
            meaning = EXCEPTION_CODES.get(code, "unknown exception")
            raise DeviceException(f"unit {unit_id} at {self.label} answered exception {code:02X} ({meaning}) to {what}")
        return rr

    async def read(
        self, function: Function, address: int, count: int, unit_id: int, *, timeout_s: float | None = None
    ) -> list[int]:
        """Read registers (or bits, as 0/1) and return them; raise a DeviceError on failure."""

        def request(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            if function == "holding":
                return client.read_holding_registers(address, count=count, device_id=unit_id)
            if function == "input":
                return client.read_input_registers(address, count=count, device_id=unit_id)
            if function == "coil":
                return client.read_coils(address, count=count, device_id=unit_id)
            return client.read_discrete_inputs(address, count=count, device_id=unit_id)

        rr = await self._call(f"{function} read {address}+{count}", unit_id, timeout_s, request)
        if function in ("coil", "discrete"):
            bits = [int(b) for b in rr.bits[:count]]
            if len(bits) < count:
                what = f"{function} read {address}+{count}"
                raise DeviceTimeout(f"unit {unit_id} at {self.label}: short answer to {what}")
            return bits
        return list(rr.registers)

    async def write_registers(
        self, address: int, values: list[int], unit_id: int, *, timeout_s: float | None = None
    ) -> None:
        """Write holding registers (function 06 for one, 16 for several)."""

        def request(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            if len(values) == 1:
                return client.write_register(address, values[0], device_id=unit_id)
            return client.write_registers(address, values, device_id=unit_id)

        await self._call(f"register write {address}+{len(values)}", unit_id, timeout_s, request)

    async def write_coils(
        self, address: int, values: list[bool], unit_id: int, *, timeout_s: float | None = None
    ) -> None:
        """Write coils (function 05 for one, 15 for several)."""

        def request(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            if len(values) == 1:
                return client.write_coil(address, values[0], device_id=unit_id)
            return client.write_coils(address, values, device_id=unit_id)

        await self._call(f"coil write {address}+{len(values)}", unit_id, timeout_s, request)

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class ModbusTcpTransport(ModbusTransport):
    """A Modbus TCP connection to one host:port, shared by every unit id behind it."""

    dial_verb = "connect to"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        inter_frame_s: float = 0.0,
    ) -> None:
        super().__init__(
            timeout_s=timeout_s,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            inter_frame_s=inter_frame_s,
        )
        self.host = host
        self.port = port

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    def _make_client(self) -> ModbusBaseClient:
        return AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
            name=f"modbus-{self.label}",
            trace_packet=self._trace,
        )


class ModbusRtuTransport(ModbusTransport):
    """A serial port driving an RS-485 line: every unit id on it goes through this one client."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: int = 1,
        timeout_s: float,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        inter_frame_s: float | None = None,
    ) -> None:
        bits = bits_per_char(bytesize, parity, stopbits)
        super().__init__(
            timeout_s=timeout_s,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            inter_frame_s=frame_gap_s(baudrate, bits) if inter_frame_s is None else inter_frame_s,
        )
        self.port = port
        self.baudrate = baudrate
        self.bytesize = bytesize
        self.parity = parity
        self.stopbits = stopbits

    @property
    def label(self) -> str:
        return self.port

    def _make_client(self) -> ModbusBaseClient:
        return AsyncModbusSerialClient(
            self.port,
            baudrate=self.baudrate,
            bytesize=self.bytesize,
            parity=self.parity,
            stopbits=self.stopbits,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
            name=f"modbus-{self.port}",
            trace_packet=self._trace,
        )

    def _dial_error(self) -> str:
        # pymodbus reports only that opening failed; opening the port ourselves says why.
        return serial_open_error(
            self.port, baudrate=self.baudrate, bytesize=self.bytesize, parity=self.parity, stopbits=self.stopbits
        )


def serial_open_error(port: str, **settings: object) -> str:
    """Why a serial port cannot be opened with these settings ("" if it can, now)."""
    try:
        probe = serial.Serial(port, exclusive=True, timeout=0, **settings)  # type: ignore[arg-type]
    except (serial.SerialException, ValueError, termios.error) as exc:
        return describe_serial_error(exc)
    probe.close()
    return "opened, but the Modbus client could not use it"
