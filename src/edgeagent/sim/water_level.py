"""A simulated waterlogging sensor: a real pymodbus TCP server with the generic layout.

Registers (holding): 0x0000 address, 0x0001 baud code, 0x0003 unit code, 0x0004
decimals, 0x0006 value (int16). The level follows a rain event (dry, rising, peak,
receding) with sensor noise, computed at the moment a request arrives. The simulator
can fall silent (a dead sensor: requests go unanswered) and answer again, and it can
fail a test that reads a forbidden address.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Iterable

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edgeagent.protocols.modbus import encode_value

REGISTER_COUNT = 16
UNIT_CODE_MM = 2


class RainEvent:
    """Water depth on a road during a cloudburst, repeating every ``period_s``."""

    def __init__(
        self,
        *,
        period_s: float = 180.0,
        peak_mm: float = 180.0,
        start_phase: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.period_s = period_s
        self.peak_mm = peak_mm
        self._rng = random.Random(seed)
        self._t0 = time.monotonic() - start_phase * period_s

    def phase(self, now: float | None = None) -> float:
        t = (time.monotonic() if now is None else now) - self._t0
        return (t % self.period_s) / self.period_s

    def level_mm(self, now: float | None = None) -> float:
        x = self.phase(now)
        if x < 0.15 or x >= 0.9:  # dry road, a film of water at most
            base = 0.0
        elif x < 0.4:  # rising: drains overwhelmed
            base = self.peak_mm * math.sin((x - 0.15) / 0.25 * math.pi / 2) ** 2
        elif x < 0.55:  # peak
            base = self.peak_mm
        else:  # receding, fast at first
            base = self.peak_mm * math.exp(-5.0 * (x - 0.55) / 0.35)
        return max(0.0, base + self._rng.gauss(0, 1.5))


class WaterLevelSimulator:
    """One or more unit ids of the generic transmitter on a loopback Modbus TCP port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_ids: Iterable[int] = (1,),
        rain: RainEvent | None = None,
        decimals: int = 1,
        forbidden: Iterable[int] = (0x0002,),
    ) -> None:
        self.host = host
        self.port = port
        self.unit_ids = list(unit_ids)
        self.rain = rain or RainEvent()
        self.decimals = decimals
        self.forbidden = set(forbidden)
        self.silent = False
        self.forbidden_reads: list[tuple[int, int]] = []
        self.requests = 0
        self.served: list[tuple[int, float]] = []  # (raw value, level_mm) per answered request
        self.fixed_level_mm: float | None = None
        # When set, every answer carries the next number of a counter instead of the
        # rain curve, so a test can tell each served value apart.
        self.counter_mode = False
        self._server: ModbusTcpServer | None = None
        self._closing = asyncio.Event()

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.requests += 1
        if self.silent:
            # A dead sensor: the request is never answered (released only at shutdown).
            await self._closing.wait()
            return ExcCodes.DEVICE_FAILURE
        if any(a in self.forbidden for a in range(address, address + count)):
            self.forbidden_reads.append((address, count))
            return ExcCodes.ILLEGAL_ADDRESS
        if self.counter_mode:
            raw = len(self.served) % 30_000 + 1
        else:
            level = self.fixed_level_mm if self.fixed_level_mm is not None else self.rain.level_mm()
            raw = round(level * 10**self.decimals)
        base = start_address
        registers[0x0003 - base] = UNIT_CODE_MM
        registers[0x0004 - base] = self.decimals
        registers[0x0006 - base] = encode_value(raw, "int16")[0]
        self.served.append((raw, raw / 10**self.decimals))
        return None

    async def start(self) -> int:
        """Start serving; return the bound port."""
        self._closing.clear()
        devices = [
            SimDevice(
                id=uid,
                simdata=[SimData(address=0, count=REGISTER_COUNT, values=0, datatype=DataType.REGISTERS)],
                action=self._action,
            )
            for uid in self.unit_ids
        ]
        self._server = ModbusTcpServer(devices, address=(self.host, self.port))
        await self._server.serve_forever(background=True)
        sockets = self._server.transport.sockets  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self._closing.set()
        await asyncio.sleep(0)
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    async def __aenter__(self) -> WaterLevelSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
