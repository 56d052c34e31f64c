"""A simulated RS-485 line: Modbus RTU devices behind a real pty pair.

The agent (or any client) opens ``port`` (the pty's slave end) like a USB adapter and
speaks RTU through pymodbus; this simulator sits on the master end, cuts requests out
of the byte stream (CRC-checked, resyncing on garbage), and answers for the units it
hosts. Units not hosted, and silent ones, do not answer, as on a real line.

Line timing (``line_timing=True``) makes the pty behave like the wire: a pty moves
bytes instantly, so the simulator holds each answer back until the moment it would have
finished arriving over a real line at the configured baud rate: the request's
characters, the 3.5-character gap, the device's turnaround, the answer's characters.
It also keeps the gap after each answer before it takes the next request. A bus
benchmark against it therefore cannot beat the physical limit. ``precise=True`` spins
through the last millisecond of each wait for sub-millisecond accuracy (for a
benchmark's separate process; in-process with an agent it would steal its loop).

Run standalone (for benchmarks): ``python -m edgeagent.sim.modbus_rtu --units 1-8``
prints the port to use and serves generic units (250 registers each) until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from edgeagent.protocols import modbus_rtu as rtu
from edgeagent.sim.modbus_units import ILLEGAL_FUNCTION, SimException, SimUnit
from edgeagent.sim.serial_pty import PtySimulator

_TABLE = {
    rtu.READ_COILS: "coil",
    rtu.READ_DISCRETE_INPUTS: "discrete",
    rtu.READ_HOLDING_REGISTERS: "holding",
    rtu.READ_INPUT_REGISTERS: "input",
    rtu.WRITE_SINGLE_COIL: "coil",
    rtu.WRITE_MULTIPLE_COILS: "coil",
    rtu.WRITE_SINGLE_REGISTER: "holding",
    rtu.WRITE_MULTIPLE_REGISTERS: "holding",
}
_SPIN_S = 0.0015
IDLE_RESET_S = 0.02
"""A partial frame this old is dropped (a real device does so after 3.5 characters of silence)."""


class RtuBusSimulator(PtySimulator):
    """Every unit on one simulated RS-485 line, answering over a pty."""

    def __init__(
        self,
        units: Mapping[int, SimUnit],
        *,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: int = 1,
        line_timing: bool = True,
        turnaround_s: float = 0.0,
        precise: bool = False,
    ) -> None:
        super().__init__()
        self.units = dict(units)
        self.baudrate = baudrate
        self.bits = rtu.bits_per_char(bytesize, parity, stopbits)
        self.line_timing = line_timing
        self.turnaround_s = turnaround_s
        self.precise = precise
        self.char_s = rtu.char_time_s(baudrate, self.bits)
        self.gap_s = rtu.frame_gap_s(baudrate, self.bits)
        self.framer = rtu.RtuRequestFramer()
        self.requests = 0
        self.answered = 0
        self.unanswered = 0
        self.log: list[tuple[int, int, int, int]] = []  # (unit, function, address, count), bounded
        self.arrivals: list[float] = []  # when each request arrived (monotonic), bounded like the log
        self._queue: asyncio.Queue[tuple[rtu.RtuRequest, int, float]] = asyncio.Queue()
        self._idle: asyncio.TimerHandle | None = None
        self._line_free_at = 0.0

    @property
    def forbidden_reads(self) -> list[tuple[int, str, int, int]]:
        """Every read that touched a range a unit forbids: (unit, table, address, count)."""
        return [(uid, *read) for uid, unit in self.units.items() for read in unit.forbidden_reads]

    def _background(self) -> Coroutine[Any, Any, None]:
        return self._serve()

    async def stop(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        await super().stop()

    def _on_data(self, data: bytes) -> None:
        now = time.monotonic()
        for request in self.framer.feed(data):
            self._queue.put_nowait((request, rtu.request_frame_bytes(request), now))
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.framer.buffered_bytes:
            self._idle = asyncio.get_running_loop().call_later(IDLE_RESET_S, self.framer.reset)

    async def _serve(self) -> None:
        while True:
            request, length, received = await self._queue.get()
            self.requests += 1
            if len(self.log) < 100_000:
                self.log.append((request.unit, request.function, request.address, request.count))
                self.arrivals.append(received)
            answer = self._answer(request)
            if answer is None:
                self.unanswered += 1
                continue
            if self.line_timing:
                start = max(received, self._line_free_at)
                done = start + (length + len(answer)) * self.char_s + self.gap_s + self.turnaround_s
                await self._sleep_until(done)
                self._line_free_at = done + self.gap_s
            elif self.turnaround_s:
                await asyncio.sleep(self.turnaround_s)
            if self._pty is not None and self._pty.write(answer):
                self.answered += 1

    async def _sleep_until(self, deadline: float) -> None:
        wait = deadline - time.monotonic()
        if self.precise:
            if wait > _SPIN_S:
                await asyncio.sleep(wait - _SPIN_S)
            while time.monotonic() < deadline:
                pass
        elif wait > 0:
            await asyncio.sleep(wait)

    def _answer(self, request: rtu.RtuRequest) -> bytes | None:
        """The bytes a device puts on the line for this request, or None for silence."""
        if request.unit == rtu.BROADCAST_UNIT:
            for unit in self.units.values():
                with contextlib.suppress(SimException):
                    self._apply(unit, request)
            return None
        unit = self.units.get(request.unit)
        if unit is None or unit.silent:
            return None
        try:
            return self._apply(unit, request)
        except SimException as exc:
            return rtu.encode_exception(request.unit, request.function, exc.code)

    @staticmethod
    def _apply(unit: SimUnit, request: rtu.RtuRequest) -> bytes:
        table = _TABLE.get(request.function) if request.known else None
        if table is None:
            raise SimException(ILLEGAL_FUNCTION)
        if request.function in rtu.READ_FUNCTIONS:
            values = unit.read(table, request.address, request.count)
            return rtu.encode_read_response(request.unit, request.function, values)
        unit.write(table, request.address, list(request.values))
        return rtu.encode_write_response(request)


def _units(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


async def _main(args: argparse.Namespace) -> None:
    units: dict[int, SimUnit] = {}
    for uid in _units(args.units):
        unit = SimUnit(holding=250, input=250)
        unit.tables["holding"][:] = [((uid << 8) + a) & 0xFFFF for a in range(250)]
        units[uid] = unit
    sim = RtuBusSimulator(
        units,
        baudrate=args.baud,
        line_timing=not args.no_timing,
        turnaround_s=args.turnaround_ms / 1000,
        precise=True,
    )
    async with sim:
        print(sim.port, flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A simulated RS-485 line on a pty, at real line timing.")
    parser.add_argument("--units", default="1-8", help="unit ids, e.g. 1-8 or 1,3,7 (250 holding registers each)")
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--turnaround-ms", type=float, default=0.0, help="each device's think time")
    parser.add_argument("--no-timing", action="store_true", help="answer at once instead of at line speed")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
