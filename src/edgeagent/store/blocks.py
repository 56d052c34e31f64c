"""Readings as a compact block: columns of small integers, compressed together.

One row of a class table holds a *block*: the readings of one commit (or one thinned
region) of that class, in sequence order. A row per reading cost ~25 bytes plus its
share of page headers, written twice (WAL, then checkpoint) and rewritten again when it
was deleted; a block of a thousand readings compresses to one to three bytes each,
because its columns are regular: sequence numbers go up by one, a poll's readings share
a time, series ids repeat in the same order, and a sensor's value moves little.

A *segment* is one run of readings (the unit a block and the tail are made of):

    u32 count | then 8 columns, each  u8 typecode | u32 bytes | the bytes
    seq deltas | time deltas (ms) | series ids | flags | kinds | integers | floats | texts

Integer columns use the narrowest array type that holds them, with their bytes stored
plane by plane (all low bytes, then the next...), which is what lets zlib find the
runs. A value is an exact decimal integer (``codec.encode_value``), a float, a text, or
nothing; its kind says which column holds it.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence

from edgeagent.model import Priority, Quality, Reading, StoredReading
from edgeagent.store.codec import (
    _EXACT_INT_LIMIT,
    BOOT_TIME_FLAG,
    DECIMAL_MASK,
    DECIMAL_SHIFT,
    POW10,
    QUALITY_MASK,
    decode_text,
    encode_value,
)

COMPRESS_LEVEL = 6
KIND_NONE, KIND_INT, KIND_FLOAT, KIND_TEXT = 0, 1, 2, 3
_HEAD = struct.Struct("<I")
_COL = struct.Struct("<cI")
# The signed array types, narrowest first, with the bound each holds (-bound <= v < bound).
_SIGNED = [(code, 1 << (8 * array(code).itemsize - 1)) for code in "bhiq"]
_QUALITIES = list(Quality)


Names = Mapping[int, tuple[str, str, str]]  # series id -> (device, point, unit)
Series = Mapping[tuple[str, str, str], int]  # (device, point, unit) -> series id


class BlockError(ValueError):
    """A block or segment that cannot be decoded (damage): never taken for readings."""


def _column(values: Sequence[int], code: str | None = None) -> bytes:
    if code is None:
        lo, hi = (min(values), max(values)) if values else (0, 0)
        code = next(c for c, bound in _SIGNED if -bound <= lo and hi < bound)
    raw = array(code, values).tobytes()
    width = array(code).itemsize
    planes = raw if width == 1 else b"".join(raw[i::width] for i in range(width))
    return _COL.pack(code.encode(), len(planes)) + planes


def _read_column(data: bytes | memoryview, pos: int, count: int) -> tuple[list[int] | list[float], int]:
    try:
        code_b, size = _COL.unpack_from(data, pos)
    except struct.error as exc:
        raise BlockError(f"segment cut short: {exc}") from exc
    pos += _COL.size
    code = code_b.decode("ascii", "replace")
    if code not in "bhiqBd" or len(code) != 1:
        raise BlockError(f"unknown column type {code!r}")
    width = array(code).itemsize
    if size % width or size > len(data) - pos:
        raise BlockError("column size does not fit")
    planes = bytes(data[pos : pos + size])
    n = size // width
    if width == 1:
        raw = planes
    else:
        buf = bytearray(size)
        for i in range(width):
            buf[i::width] = planes[i * n : (i + 1) * n]
        raw = bytes(buf)
    out = array(code)
    out.frombytes(raw)
    if count >= 0 and n != count:
        raise BlockError(f"column holds {n} values, {count} expected")
    return out.tolist(), pos + size


def encode_segment(readings: Sequence[StoredReading], series: Series) -> bytes:
    """The segment of readings (in sequence order); ``series``: (device, point, unit) -> id."""
    return encode_rows(((r.seq, r, r.boot is not None) for r in readings), series)  # type: ignore[arg-type]


def encode_rows(rows: Iterable[tuple[int, Reading, bool]], series: Series) -> bytes:
    """The segment of (seq, reading, whether its time is boot-relative) rows, in sequence order.

    A ``Reading`` or a ``StoredReading`` will do: only the fields they share are read.
    This runs for every reading the agent takes, so the common case is written out here:
    a float that is exact with as many decimals as the reading before it.
    """
    seqs: list[int] = []
    times: list[int] = []
    sids: list[int] = []
    flags: list[int] = []
    kinds: list[int] = []
    ints: list[int] = []
    floats: list[float] = []
    text_lens: list[int] = []
    texts: list[bytes] = []
    last_seq = last_ts = 0
    hints: dict[int, int] = {}  # series id -> the decimals its last value took
    for seq, r, booted in rows:
        seqs.append(seq - last_seq)
        last_seq = seq
        ts_ms = round(r.ts * 1000)
        times.append(ts_ms - last_ts)
        last_ts = ts_ms
        sid = series[(r.device, r.point, r.unit)]
        sids.append(sid)
        value = r.value
        stored: int | float | str | None
        if type(value) is float and value - value == 0.0:  # finite
            decimals = hints.get(sid, 0)
            scale = POW10[decimals]
            stored = round(value * scale)
            if stored / scale == value and -_EXACT_INT_LIMIT < stored < _EXACT_INT_LIMIT:
                f = decimals << DECIMAL_SHIFT
            else:
                stored, f = encode_value(value)
                if type(stored) is int:
                    hints[sid] = (f >> DECIMAL_SHIFT) & DECIMAL_MASK
        else:
            stored, f = encode_value(value, r.reason)
        f |= r.quality
        if booted:
            f |= BOOT_TIME_FLAG
        flags.append(f)
        if type(stored) is int:
            kinds.append(KIND_INT)
            ints.append(stored)
        elif stored is None:
            kinds.append(KIND_NONE)
        elif type(stored) is float:
            kinds.append(KIND_FLOAT)
            floats.append(stored)
        else:
            kinds.append(KIND_TEXT)
            b = str(stored).encode()
            text_lens.append(len(b))
            texts.append(b)
    parts = [
        _HEAD.pack(len(seqs)),
        _column(seqs),
        _column(times),
        _column(sids),
        _column(flags, "B"),
        _column(kinds, "B"),
        _column(ints),
        _column(floats, "d"),
        _column(text_lens),
        _HEAD.pack(sum(text_lens)),
        *texts,
    ]
    return b"".join(parts)


def decode_segment(
    data: bytes | memoryview, pos: int, prio: Priority, names: Names, boot_of: Callable[[int], str]
) -> tuple[list[StoredReading], int]:
    """The readings of the segment at ``pos`` (``names``: series id -> device, point, unit;
    ``boot_of``: the boot id of a boot-timed sequence number), and where the next one starts."""
    try:
        (count,) = _HEAD.unpack_from(data, pos)
    except struct.error as exc:
        raise BlockError(f"segment cut short: {exc}") from exc
    pos += _HEAD.size
    seq_d, pos = _read_column(data, pos, count)
    ts_d, pos = _read_column(data, pos, count)
    sids, pos = _read_column(data, pos, count)
    flags, pos = _read_column(data, pos, count)
    kinds, pos = _read_column(data, pos, count)
    ints, pos = _read_column(data, pos, -1)
    floats, pos = _read_column(data, pos, -1)
    text_lens, pos = _read_column(data, pos, -1)
    try:
        (text_total,) = _HEAD.unpack_from(data, pos)
    except struct.error as exc:
        raise BlockError(f"segment cut short: {exc}") from exc
    pos += _HEAD.size
    if text_total != sum(text_lens) or pos + text_total > len(data):
        raise BlockError("text column does not fit")
    out: list[StoredReading] = []
    append = out.append
    seq = ts = 0
    i_int = i_float = i_text = 0
    text_pos = pos
    qualities = _QUALITIES
    for k in range(count):
        seq += seq_d[k]  # type: ignore[assignment]
        ts += ts_d[k]  # type: ignore[assignment]
        f = flags[k]
        kind = kinds[k]
        try:
            device, point, unit = names[sids[k]]  # type: ignore[index]
        except KeyError:
            raise BlockError(f"series {sids[k]} of seq {seq} is not known") from None
        boot = boot_of(seq) if f & BOOT_TIME_FLAG else None  # type: ignore[operator]
        quality = qualities[f & QUALITY_MASK]  # type: ignore[operator]
        if kind == KIND_INT:
            m = ints[i_int]
            i_int += 1
            d = (f >> DECIMAL_SHIFT) & DECIMAL_MASK  # type: ignore[operator]
            append(
                StoredReading(seq, device, point, ts / 1000, m / POW10[d] if d else float(m), unit, quality, prio, boot)
            )
        elif kind == KIND_NONE:
            append(StoredReading(seq, device, point, ts / 1000, None, unit, quality, prio, boot))
        elif kind == KIND_FLOAT:
            append(StoredReading(seq, device, point, ts / 1000, floats[i_float], unit, quality, prio, boot))
            i_float += 1
        elif kind == KIND_TEXT:
            n = text_lens[i_text]
            i_text += 1
            text, reason = decode_text(bytes(data[text_pos : text_pos + n]).decode())  # type: ignore[misc]
            text_pos += n  # type: ignore[operator]
            append(StoredReading(seq, device, point, ts / 1000, text, unit, quality, prio, boot, reason))
        else:
            raise BlockError(f"unknown value kind {kind}")
    if i_int != len(ints) or i_float != len(floats) or i_text != len(text_lens):
        raise BlockError("value columns do not match the kinds")
    return out, pos + text_total  # type: ignore[operator]


# SQLite's layout of a row on a 4096-byte page: what stays on the leaf, what overflows.
PAGE_BYTES = 4096
_MAX_LOCAL = PAGE_BYTES - 35
_MIN_LOCAL = (PAGE_BYTES - 12) * 32 // 255 - 23
_ROW_HEAD = 12  # record header and the row's integers
_CELL = 12  # cell pointer, sizes, rowid


def block_cost(blob_bytes: int) -> int:
    """Bytes a block's row takes in the file: what a class's budget is charged for it."""
    payload = blob_bytes + _ROW_HEAD
    if payload <= _MAX_LOCAL:
        return payload + _CELL
    local = _MIN_LOCAL + (payload - _MIN_LOCAL) % (PAGE_BYTES - 4)
    if local > _MAX_LOCAL:
        local = _MIN_LOCAL
    pages = -(-(payload - local) // (PAGE_BYTES - 4))
    return local + _CELL + pages * PAGE_BYTES


def compress(segments: Iterable[bytes]) -> bytes:
    return zlib.compress(b"".join(segments), COMPRESS_LEVEL)


def inflate(blob: bytes) -> bytes:
    if not isinstance(blob, bytes):
        raise BlockError(f"a block holds {type(blob).__name__}, not bytes")
    try:
        return zlib.decompress(blob)
    except zlib.error as exc:
        raise BlockError(f"block does not inflate: {exc}") from exc


def decode_block(blob: bytes, prio: Priority, names: Names, boot_of: Callable[[int], str]) -> list[StoredReading]:
    """Every reading of a stored block; BlockError when it is damaged."""
    data = inflate(blob)
    out: list[StoredReading] = []
    pos = 0
    while pos < len(data):
        part, pos = decode_segment(data, pos, prio, names, boot_of)
        out.extend(part)
    return out
