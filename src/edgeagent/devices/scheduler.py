"""Devices and the one scheduler each bus has.

A device is a profile at an address on a bus; it knows which requests a poll needs
and how to turn their answers into readings, and does no I/O of its own. A
``BusPoller`` owns a bus: every device on it goes through it, one transaction at a
time, each on its own interval. A failing device backs off on its own schedule, so it
never stalls its neighbours; its state changes are logged once, not on every failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgeagent.backoff import Backoff
from edgeagent.config import DeviceConfig
from edgeagent.errors import DecodeError, DeviceError, DeviceTimeout
from edgeagent.live import DeviceLive, DeviceState, PointValue
from edgeagent.model import Quality, Reading
from edgeagent.profiles import LENGTH_UNITS_MM, ModbusProfile
from edgeagent.protocols.modbus import Function, ReadSpan, decode_value, plan_reads
from edgeagent.transports.modbus import ModbusTcpTransport

log = logging.getLogger(__name__)

MAX_DECIMALS = 6


class ModbusDevice:
    """A Modbus device: the reads one poll needs, and their decoding."""

    def __init__(self, cfg: DeviceConfig, profile: ModbusProfile) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.unit_id = cfg.unit_id
        self.profile = profile
        self.poll_interval_s = cfg.poll_interval_s or profile.default_poll_interval_s
        self.spans: list[ReadSpan] = plan_reads(
            profile.wanted_ranges(),
            max_gap=profile.max_gap_registers,
            forbidden=[(f.function, f.first, f.last) for f in profile.forbidden],
        )

    def decode(self, answers: Sequence[tuple[ReadSpan, Sequence[int]]], ts: float) -> list[Reading]:
        """Turn the answers to ``self.spans`` into readings; raise DecodeError if implausible."""
        regs: dict[tuple[Function, int], int] = {}
        for span, values in answers:
            if len(values) < span.count:
                raise DecodeError(f"short answer: {len(values)} of {span.count} registers")
            for i in range(span.count):
                regs[(span.function, span.start + i)] = values[i]
        readings = []
        for p in self.profile.points:
            raw = decode_value(
                [regs[(p.function, p.address + i)] for i in range(p.registers)],
                p.type,
                p.word_order,
            )
            value = raw * p.scale
            if p.decimals_register is not None:
                decimals = regs[(p.function, p.decimals_register)]
                if decimals > MAX_DECIMALS:
                    raise DecodeError(f"{p.name}: implausible decimals register value {decimals}")
                value = value / 10**decimals
            if p.unit_register is not None:
                code = regs[(p.function, p.unit_register)]
                symbol = p.unit_codes.get(str(code))
                if symbol is None:
                    raise DecodeError(f"{p.name}: unknown unit code {code}")
                if symbol != p.unit:
                    value = value * LENGTH_UNITS_MM[symbol] / LENGTH_UNITS_MM[p.unit]
            value = round(value + p.offset, 9)
            readings.append(Reading(self.id, p.name, ts, value, p.unit))
        return readings


@dataclass(slots=True)
class _Schedule:
    device: ModbusDevice
    due: float
    failures: int = 0
    backoff: Backoff = field(init=False)

    def __post_init__(self) -> None:
        interval = self.device.poll_interval_s
        self.backoff = Backoff(interval, max(interval, self.device.cfg.backoff_max_s))


class BusPoller:
    """The only owner of one bus's schedule."""

    def __init__(
        self,
        name: str,
        transport: ModbusTcpTransport,
        devices: Sequence[ModbusDevice],
        live: dict[str, DeviceLive],
        on_readings: Callable[[list[Reading]], None],
        *,
        beat: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.transport = transport
        self.live = live
        self.on_readings = on_readings
        self._beat = beat or (lambda: None)
        now = time.monotonic()
        self._schedules = [_Schedule(d, now) for d in devices]

    async def run(self) -> None:
        """Poll forever; cancelled to stop. Wakes at least once a second to check in."""
        try:
            while True:
                self._beat()
                entry = min(self._schedules, key=lambda s: s.due)
                delay = entry.due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(min(delay, 1.0))
                    continue
                await self._poll(entry)
        finally:
            await self.transport.close()

    async def _poll(self, entry: _Schedule) -> None:
        device = entry.device
        try:
            answers = [(span, await self._read(device, span)) for span in device.spans]
            readings = device.decode(answers, time.time())
        except DeviceError as exc:
            self._failed(entry, exc.reason)
        except DecodeError as exc:
            self._failed(entry, f"bad data: {exc}")
        else:
            self._succeeded(entry, readings)

    async def _read(self, device: ModbusDevice, span: ReadSpan) -> list[int]:
        attempts = device.cfg.retries + 1
        # A hard ceiling, so a misbehaving library can never hang the bus.
        ceiling_s = self.transport.timeout_s * 2 + 1
        for attempt in range(attempts):
            try:
                async with asyncio.timeout(ceiling_s):
                    return await self.transport.read(span.function, span.start, span.count, device.unit_id)
            except TimeoutError as exc:
                if attempt + 1 == attempts:
                    raise DeviceTimeout(f"no answer from unit {device.unit_id} within {ceiling_s:g} s") from exc
            except DeviceTimeout:
                if attempt + 1 == attempts:
                    raise
        raise AssertionError("unreachable")

    def _succeeded(self, entry: _Schedule, readings: list[Reading]) -> None:
        device = entry.device
        state = self.live[device.id]
        now_wall = time.time()
        if state.state in (DeviceState.OFFLINE, DeviceState.DEGRADED):
            log.info("device %s is back online (was %s: %s)", device.id, state.state.value, state.reason)
        if state.state != DeviceState.ONLINE:
            state.state, state.reason, state.state_since = DeviceState.ONLINE, "", now_wall
        state.last_ok_ts = now_wall
        state.polls_ok += 1
        for r in readings:
            state.points[r.point] = PointValue(r.value, r.unit, r.ts, r.quality)
        self.on_readings(readings)
        entry.failures = 0
        entry.backoff.reset()
        now = time.monotonic()
        nxt = entry.due + device.poll_interval_s
        entry.due = nxt if nxt > now else now

    def _failed(self, entry: _Schedule, reason: str) -> None:
        device = entry.device
        state = self.live[device.id]
        entry.failures += 1
        state.polls_failed += 1
        limit = device.cfg.offline_after_failures
        new_state = DeviceState.OFFLINE if entry.failures >= limit else DeviceState.DEGRADED
        if new_state != state.state:
            level = logging.WARNING if new_state == DeviceState.OFFLINE else logging.INFO
            log.log(level, "device %s is %s: %s", device.id, new_state.value, reason)
            state.state_since = time.time()
        state.state, state.reason = new_state, reason
        for pv in state.points.values():
            if pv.quality == Quality.GOOD:
                pv.quality = Quality.UNCERTAIN
        # Retry on the normal schedule until offline, then back off (capped, jittered).
        delay = device.poll_interval_s if entry.failures < limit else entry.backoff.next_delay()
        entry.due = time.monotonic() + delay
