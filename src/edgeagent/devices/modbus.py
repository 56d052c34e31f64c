"""A Modbus device: the requests one poll needs, their decoding, and writes.

The device does no I/O of its own scheduling: the bus scheduler hands it the bus's
transport and a ``transact`` wrapper (retries, a hard time ceiling) for each poll.
Decoding is planned once, when the device is built: each point knows which read span
and offset its registers come from, so a poll of a 50-point device is a few list
slices, not a search.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from edgeagent.config import DeviceConfig
from edgeagent.errors import DecodeError, InvalidWrite
from edgeagent.model import Quality, Reading
from edgeagent.profiles import LENGTH_UNITS_MM, ModbusProfile, RegisterPoint
from edgeagent.protocols.modbus import (
    Function,
    ReadSpan,
    decode_value,
    encode_value,
    plan_reads,
)

if TYPE_CHECKING:  # the device only holds it: a site without Modbus buses never loads pymodbus
    from edgeagent.transports.modbus import ModbusTransport

MAX_DECIMALS = 6
_TRUE = frozenset({"1", "on", "true", "yes"})
_FALSE = frozenset({"0", "off", "false", "no"})

Transact = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class WritePlan:
    """What a write puts on the wire, and how to say it to a person."""

    point: str
    function: Literal["holding", "coil"]
    address: int
    values: tuple[int, ...]
    shown: str  # e.g. "40 %", "on", "schedule (1)"


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where one register (or run of registers) of a point sits in a poll's answers."""

    span: int
    offset: int
    count: int


class ModbusDevice:
    """A profile at a unit id on a Modbus bus."""

    protocol = "modbus"

    def __init__(self, cfg: DeviceConfig, profile: ModbusProfile, *, bus_timeout_s: float = 1.0) -> None:
        if cfg.unit_id is None:
            raise ValueError(f"device {cfg.id} has no unit id")
        self.cfg = cfg
        self.id = cfg.id
        self.unit_id = cfg.unit_id
        self.profile = profile
        self.poll_interval_s = cfg.poll_interval_s or profile.default_poll_interval_s
        self.timeout_s = cfg.timeout_ms / 1000 if cfg.timeout_ms else bus_timeout_s
        self.framing_errors = 0
        self.spans: list[ReadSpan] = plan_reads(
            profile.wanted_ranges(),
            max_gap=profile.max_gap_registers,
            forbidden=[(f.function, f.first, f.last) for f in profile.forbidden],
        )
        self._plan = [self._slots(p) for p in profile.points]
        self._fast = [_fast_plan(p, slot) for p, slot, _, _ in self._plan]
        self._points = {p.name: p for p in profile.points}
        self._has_enums = any(p.enum for p in profile.points)

    @property
    def address(self) -> str:
        return f"unit {self.unit_id}"

    def _slot(self, function: Function, address: int, count: int) -> _Slot:
        for i, span in enumerate(self.spans):
            if span.function == function and span.start <= address and address + count <= span.end:
                return _Slot(i, address - span.start, count)
        raise AssertionError(f"{function} {address}+{count} is in no read span")  # plan_reads covers every range

    def _slots(self, p: RegisterPoint) -> tuple[RegisterPoint, _Slot, _Slot | None, _Slot | None]:
        return (
            p,
            self._slot(p.function, p.address, p.registers),
            None if p.decimals_register is None else self._slot(p.function, p.decimals_register, 1),
            None if p.unit_register is None else self._slot(p.function, p.unit_register, 1),
        )

    async def poll(self, transport: ModbusTransport, transact: Transact) -> list[Reading]:
        """Read every span (each through ``transact``) and decode; raise DeviceError or DecodeError."""
        answers: list[Sequence[int]] = []
        for span in self.spans:
            values = await transact(
                lambda span=span: transport.read(
                    span.function, span.start, span.count, self.unit_id, timeout_s=self.timeout_s
                )
            )
            answers.append(values)
        return self.decode(list(zip(self.spans, answers, strict=True)), time.time())

    def decode(self, answers: Sequence[tuple[ReadSpan, Sequence[int]]], ts: float) -> list[Reading]:
        """Turn the answers to ``self.spans`` into readings; raise DecodeError if implausible."""
        blocks: list[Sequence[int]] = []
        for span, values in answers:
            if len(values) < span.count:
                raise DecodeError(f"short answer: {len(values)} of {span.count} registers")
            blocks.append(values)
        readings = []
        device = self.id
        for (p, slot, decimals_slot, unit_slot), fast in zip(self._plan, self._fast, strict=True):
            if fast is not None:
                # The common case (a plain 16-bit register, scaled) without the general path's checks.
                signed, divisor, scale = fast
                raw = blocks[slot.span][slot.offset]
                if signed and raw & 0x8000:
                    raw -= 0x10000
                value = raw / divisor if divisor else raw * scale
                readings.append(Reading(device, p.name, ts, float(value), p.unit))
                continue
            words = blocks[slot.span][slot.offset : slot.offset + slot.count]
            readings.append(self._decode_point(device, p, words, decimals_slot, unit_slot, blocks, ts))
        return readings

    @staticmethod
    def _decode_point(
        device: str,
        p: RegisterPoint,
        words: Sequence[int],
        decimals_slot: _Slot | None,
        unit_slot: _Slot | None,
        blocks: list[Sequence[int]],
        ts: float,
    ) -> Reading:
        data_type = p.type
        if data_type == "bool":
            raw: float = 1 if words[0] else 0
        elif data_type == "uint16":
            raw = words[0]
        elif data_type == "int16":
            raw = words[0] - 0x10000 if words[0] & 0x8000 else words[0]
        else:
            raw = decode_value(words, data_type, p.word_order)
        if p.missing_raw and raw in p.missing_raw:
            return Reading(device, p.name, ts, None, p.unit, Quality.MISSING)
        if p.bit is not None:
            raw = (int(raw) >> p.bit) & ((1 << p.bits) - 1)
        if data_type == "float32" and not math.isfinite(raw):
            return Reading(device, p.name, ts, None, p.unit, Quality.INVALID)
        quality = Quality.GOOD
        if p.enum and str(int(raw)) not in p.enum:
            quality = Quality.UNCERTAIN
        value = raw * p.scale if p.scale != 1 else raw
        if decimals_slot is not None:
            decimals = blocks[decimals_slot.span][decimals_slot.offset]
            if decimals > MAX_DECIMALS:
                raise DecodeError(f"{p.name}: implausible decimals register value {decimals}")
            value = value / 10**decimals
        if unit_slot is not None:
            code = blocks[unit_slot.span][unit_slot.offset]
            symbol = p.unit_codes.get(str(code))
            if symbol is None:
                raise DecodeError(f"{p.name}: unknown unit code {code}")
            if symbol != p.unit:
                value = value * LENGTH_UNITS_MM[symbol] / LENGTH_UNITS_MM[p.unit]
        if p.offset:
            value += p.offset
        if data_type != "bool" and (p.scale != 1 or decimals_slot is not None or unit_slot is not None or p.offset):
            value = round(value, 9)
        return Reading(device, p.name, ts, float(value), p.unit, quality)

    def labels(self, readings: Sequence[Reading]) -> dict[str, str]:
        """Labels of enum values among ``readings``, for the status page."""
        out: dict[str, str] = {}
        if not self._has_enums:
            return out
        for r in readings:
            p = self._points.get(r.point)
            if p is not None and p.enum and r.value is not None:
                code = str(int(r.value))
                out[r.point] = p.enum.get(code, f"unknown ({code})")
        return out

    # Writes ---------------------------------------------------------------------------

    def plan_write(self, point: str, value: float | str) -> WritePlan:
        """Check a write against the profile and encode it; raise InvalidWrite with the reason."""
        p = self._points.get(point)
        writable = sorted(name for name, q in self._points.items() if q.writable)
        if p is None:
            raise InvalidWrite(f"{self.id} has no point {point!r}; writable: {', '.join(writable) or 'none'}")
        if not p.writable:
            raise InvalidWrite(f"{self.id}.{point} is read-only; writable: {', '.join(writable) or 'none'}")
        if p.function == "coil":
            on = _parse_bool(value)
            return WritePlan(point, "coil", p.address, (1 if on else 0,), "on" if on else "off")
        number, shown = self._number(p, value)
        if p.write_min is not None and number < p.write_min:
            raise InvalidWrite(f"{self.id}.{point}: {shown} is below the minimum {p.write_min:g} {p.unit}")
        if p.write_max is not None and number > p.write_max:
            raise InvalidWrite(f"{self.id}.{point}: {shown} is above the maximum {p.write_max:g} {p.unit}")
        raw = (number - p.offset) / p.scale
        if p.type != "float32":
            if abs(raw - round(raw)) > 1e-6:
                step = abs(p.scale)
                raise InvalidWrite(f"{self.id}.{point}: {shown} is not a multiple of the point's step {step:g}")
            raw = round(raw)
        try:
            words = encode_value(raw, p.type, p.word_order)  # type: ignore[arg-type]
        except DecodeError as exc:
            raise InvalidWrite(f"{self.id}.{point}: {shown} does not fit a {p.type} register") from exc
        return WritePlan(point, "holding", p.address, tuple(words), shown)

    def _number(self, p: RegisterPoint, value: float | str) -> tuple[float, str]:
        if isinstance(value, str):
            text = value.strip()
            codes = {label.lower(): code for code, label in p.enum.items()}
            if text.lower() in codes:
                code = int(codes[text.lower()])
                return float(code), f"{p.enum[str(code)]} ({code})"
            try:
                value = float(text)
            except ValueError:
                options = f"; one of {', '.join(p.enum.values())}" if p.enum else ""
                raise InvalidWrite(f"{self.id}.{p.name}: {text!r} is not a number{options}") from None
        if not math.isfinite(value):
            raise InvalidWrite(f"{self.id}.{p.name}: {value} is not a finite number")
        if p.enum:
            code = str(int(value)) if float(value).is_integer() else ""
            if code not in p.enum:
                raise InvalidWrite(f"{self.id}.{p.name}: {value:g} is not one of {', '.join(p.enum)}")
            return float(value), f"{p.enum[code]} ({code})"
        return float(value), f"{value:g} {p.unit}"

    async def write(self, transport: ModbusTransport, plan: WritePlan, transact: Transact) -> None:
        """Send a planned write (through ``transact``); raise DeviceError if the device refuses it."""
        unit, timeout_s = self.unit_id, self.timeout_s
        if plan.function == "coil":
            bits = [bool(v) for v in plan.values]
            await transact(lambda: transport.write_coils(plan.address, bits, unit, timeout_s=timeout_s))
        else:
            words = list(plan.values)
            await transact(lambda: transport.write_registers(plan.address, words, unit, timeout_s=timeout_s))


def _fast_plan(p: RegisterPoint, slot: _Slot) -> tuple[bool, int, float] | None:
    """(signed, divisor, scale) for a point the fast path can decode exactly, else None.

    A scale of 10^-k is applied as a division by 10^k, which gives the double nearest to
    the decimal value (``1234 / 10`` is 123.4; ``1234 * 0.1`` is 123.40000000000001).
    """
    plain = (
        p.type in ("int16", "uint16")
        and p.bit is None
        and not p.enum
        and not p.missing_raw
        and p.offset == 0
        and p.decimals_register is None
        and p.unit_register is None
    )
    if not plain:
        return None
    for k in range(7):
        if p.scale == 10.0**-k:
            return p.type == "int16", 10**k, 1.0
    return None


def _parse_bool(value: float | str) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise InvalidWrite(f"a coil takes on/off (or 1/0, true/false), not {value!r}")
    if value in (0, 1):
        return bool(value)
    raise InvalidWrite(f"a coil takes 0 or 1, not {value!r}")
