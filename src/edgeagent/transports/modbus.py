"""Modbus over TCP: one pymodbus client per bus, its errors translated into ours.

The transport owns the connection and nothing else: it knows no profiles, readings or
schedules. Reconnects are driven from here with capped, jittered backoff; pymodbus's
own background reconnect is switched off so that exactly one place decides when to
dial again. Nothing above this module sees a pymodbus exception.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse

from edgeagent.backoff import Backoff
from edgeagent.errors import DeviceException, DeviceTimeout, DeviceUnreachable
from edgeagent.protocols.modbus import Function

log = logging.getLogger(__name__)

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


class ModbusTcpTransport:
    """A Modbus TCP connection to one host:port, shared by every unit id behind it."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | None = None
        self._backoff = Backoff(reconnect_min_s, reconnect_max_s)
        self._next_dial = 0.0
        self._last_dial_error = ""

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        now = time.monotonic()
        if now < self._next_dial:
            raise DeviceUnreachable(
                f"{self.label} unreachable ({self._last_dial_error}); next try in {self._next_dial - now:.1f} s"
            )
        await self.close()
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
            name=f"modbus-{self.label}",
        )
        try:
            ok = await asyncio.wait_for(client.connect(), timeout=self.timeout_s + 1)
        except (TimeoutError, OSError, ModbusException) as exc:
            ok = False
            self._last_dial_error = str(exc) or type(exc).__name__
        else:
            self._last_dial_error = "connection refused or timed out"
        if not ok:
            client.close()
            self._next_dial = time.monotonic() + self._backoff.next_delay()
            raise DeviceUnreachable(f"cannot connect to {self.label}: {self._last_dial_error}")
        self._backoff.reset()
        self._client = client
        return client

    async def read(self, function: Function, address: int, count: int, unit_id: int) -> list[int]:
        """Read registers (or bits, as 0/1) and return them; raise a DeviceError on failure."""
        client = await self._connected()
        try:
            if function == "holding":
                rr = await client.read_holding_registers(address, count=count, device_id=unit_id)
            elif function == "input":
                rr = await client.read_input_registers(address, count=count, device_id=unit_id)
            elif function == "coil":
                rr = await client.read_coils(address, count=count, device_id=unit_id)
            else:
                rr = await client.read_discrete_inputs(address, count=count, device_id=unit_id)
        except ModbusIOException as exc:
            raise DeviceTimeout(f"no answer from unit {unit_id} at {self.label} within {self.timeout_s:g} s") from exc
        except ConnectionException as exc:
            await self.close()
            raise DeviceUnreachable(f"connection to {self.label} lost: {exc}") from exc
        except ModbusException as exc:
            await self.close()
            raise DeviceTimeout(f"unit {unit_id} at {self.label}: {exc}") from exc
        if isinstance(rr, ExceptionResponse) or rr.isError():
            code = getattr(rr, "exception_code", 0)
            meaning = EXCEPTION_CODES.get(code, "unknown exception")
            raise DeviceException(
                f"unit {unit_id} at {self.label} answered exception {code:02X} ({meaning}) "
                f"to {function} read {address}+{count}"
            )
        if function in ("coil", "discrete"):
            return [int(b) for b in rr.bits[:count]]
        return list(rr.registers)

    async def write_registers(self, address: int, values: list[int], unit_id: int) -> None:
        """Write holding registers (function 06 for one, 16 for several)."""
        client = await self._connected()
        try:
            if len(values) == 1:
                rr = await client.write_register(address, values[0], device_id=unit_id)
            else:
                rr = await client.write_registers(address, values, device_id=unit_id)
        except ModbusIOException as exc:
            raise DeviceTimeout(f"no answer from unit {unit_id} at {self.label}") from exc
        except ModbusException as exc:
            await self.close()
            raise DeviceUnreachable(f"write to {self.label} failed: {exc}") from exc
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            raise DeviceException(
                f"unit {unit_id} at {self.label} refused write at {address}: exception {code:02X} "
                f"({EXCEPTION_CODES.get(code, 'unknown exception')})"
            )

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
