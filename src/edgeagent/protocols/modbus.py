"""Modbus register values and read planning: pure functions, no I/O.

Facts used (Modbus Application Protocol v1.1b3; ../shared/REFERENCE.md):
- Registers are 16-bit big-endian words. 32-bit values span two registers and come in
  four orders: ABCD (big-endian words, big-endian bytes), CDAB (words swapped, the most
  common "swap"), BADC (bytes swapped within each word), DCBA (fully little-endian).
- Function 03/04 reads at most 125 registers, 01/02 at most 2000 bits; 16 writes at
  most 123 registers, 15 at most 1968 coils.
- Bit fields: a status register packs flags and small numbers into bits; bit 0 is the
  least significant bit of the (unsigned) register value.

Read merging: points of one device and function are read in as few requests as
possible. A gap between two wanted ranges is read through (and discarded) when it is no
longer than the profile's gap budget, because one more transaction costs far more bus
time than a few extra registers; but a request never touches a range the profile
forbids, since some devices answer such reads with an exception or garbage.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from edgeagent.errors import DecodeError

DataType = Literal["int16", "uint16", "int32", "uint32", "float32"]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
Function = Literal["holding", "input", "coil", "discrete"]

MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_WRITE_REGISTERS = 123
MAX_WRITE_COILS = 1968

_WIDTH: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
_STRUCT: dict[str, str] = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
}
# Byte positions, in the ABCD (big-endian) value, of each wire byte for an order.
_PERMUTATION: dict[str, tuple[int, int, int, int]] = {
    "ABCD": (0, 1, 2, 3),
    "CDAB": (2, 3, 0, 1),
    "BADC": (1, 0, 3, 2),
    "DCBA": (3, 2, 1, 0),
}


def register_count(data_type: DataType) -> int:
    """Registers a value of ``data_type`` occupies."""
    return _WIDTH[data_type]


def _reorder(raw: bytes, order: WordOrder) -> bytes:
    """Map between wire order and ABCD; each permutation is its own inverse."""
    perm = _PERMUTATION[order]
    return bytes(raw[i] for i in perm)


def decode_value(registers: Sequence[int], data_type: DataType, word_order: WordOrder = "ABCD") -> int | float:
    """Decode one value from its registers, as read off the wire."""
    width = _WIDTH[data_type]
    if len(registers) != width:
        raise DecodeError(f"{data_type} needs {width} register(s), got {len(registers)}")
    if any(not 0 <= r <= 0xFFFF for r in registers):
        raise DecodeError(f"register value out of range: {list(registers)}")
    raw = b"".join(r.to_bytes(2, "big") for r in registers)
    if width == 2:
        raw = _reorder(raw, word_order)
    elif word_order in ("BADC", "DCBA"):
        raw = raw[::-1]
    (value,) = struct.unpack(_STRUCT[data_type], raw)
    return value


def value_bits(data_type: DataType) -> int:
    """Bits a value of ``data_type`` holds (the room a bit field has)."""
    return 16 * _WIDTH[data_type]


def extract_bits(raw: int, first_bit: int, width: int = 1) -> int:
    """The unsigned number in bits ``first_bit .. first_bit + width - 1`` of ``raw``."""
    if first_bit < 0 or width < 1:
        raise DecodeError(f"invalid bit field {first_bit}+{width}")
    return (raw >> first_bit) & ((1 << width) - 1)


def encode_value(value: float, data_type: DataType, word_order: WordOrder = "ABCD") -> list[int]:
    """Encode one value into wire registers (for writes and simulators)."""
    try:
        raw = struct.pack(_STRUCT[data_type], value if data_type == "float32" else int(value))
    except struct.error as exc:
        raise DecodeError(f"{value!r} does not fit {data_type}") from exc
    if len(raw) == 4:
        raw = _reorder(raw, word_order)
    elif word_order in ("BADC", "DCBA"):
        raw = raw[::-1]
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadSpan:
    """One read request: ``count`` registers (or bits) of ``function`` from ``start``."""

    function: Function
    start: int
    count: int

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.start + self.count


def _touches(start: int, end: int, forbidden: Iterable[tuple[int, int]]) -> bool:
    """True when [start, end) overlaps any forbidden [lo, hi] (inclusive)."""
    return any(start <= hi and lo < end for lo, hi in forbidden)


def plan_reads(
    wanted: Iterable[tuple[Function, int, int]],
    *,
    max_gap: int,
    forbidden: Iterable[tuple[Function, int, int]] = (),
) -> list[ReadSpan]:
    """Merge wanted ``(function, start, count)`` ranges into the fewest requests.

    A gap is bridged only when it is at most ``max_gap`` long, the merged request stays
    within the function's maximum, and no address in it is forbidden. Raises
    ``DecodeError`` when a wanted range itself lies in a forbidden range, as such a
    profile can never be polled.
    """
    by_function: dict[str, list[tuple[int, int]]] = {}
    for function, start, count in wanted:
        if count < 1 or start < 0 or start + count > 0x10000:
            raise DecodeError(f"invalid {function} range start={start} count={count}")
        by_function.setdefault(function, []).append((start, start + count))
    banned: dict[str, list[tuple[int, int]]] = {}
    for function, lo, hi in forbidden:
        banned.setdefault(function, []).append((lo, hi))

    spans: list[ReadSpan] = []
    for function in sorted(by_function):
        limit = MAX_READ_BITS if function in ("coil", "discrete") else MAX_READ_REGISTERS
        fb = banned.get(function, [])
        ranges = sorted(by_function[function])
        for start, end in ranges:
            if _touches(start, end, fb):
                raise DecodeError(f"{function} {start}..{end - 1} lies in a forbidden range")
        cur_start, cur_end = ranges[0]
        for start, end in ranges[1:]:
            merged_end = max(cur_end, end)
            gap = start - cur_end
            if gap <= max_gap and merged_end - cur_start <= limit and not _touches(cur_end, start, fb):
                cur_end = merged_end
                continue
            spans.extend(_split(function, cur_start, cur_end, limit))
            cur_start, cur_end = start, end
        spans.extend(_split(function, cur_start, cur_end, limit))
    return spans


def _split(function: Function, start: int, end: int, limit: int) -> list[ReadSpan]:
    """Cut a range longer than one request allows (only a single wide point can be)."""
    out: list[ReadSpan] = []
    while start < end:
        count = min(limit, end - start)
        out.append(ReadSpan(function=function, start=start, count=count))
        start += count
    return out


def slice_span(span: ReadSpan, values: Sequence[int], start: int, count: int) -> Sequence[int]:
    """The ``count`` values at ``start`` out of a span's response."""
    offset = start - span.start
    if offset < 0 or offset + count > span.count or len(values) < offset + count:
        raise DecodeError(f"address {start}+{count} not in response for {span}")
    return values[offset : offset + count]
