"""How one reading is laid out in a row, and what a row costs on the card.

``flags`` packs, from the lowest bit: the quality (2 bits), the decimal count of an
exactly scaled value (3 bits), a text value (1 bit), and a time that is relative to the
gateway's boot because the wall clock was not yet set (1 bit).
"""

from __future__ import annotations

MAX_DECIMALS = 6
QUALITY_MASK = 0b11
DECIMAL_SHIFT = 2
DECIMAL_MASK = 0b111
TEXT_FLAG = 1 << 5
BOOT_TIME_FLAG = 1 << 6
_EXACT_INT_LIMIT = 2**47
_INF = float("inf")
POW10 = tuple(10**d for d in range(MAX_DECIMALS + 2))

# Estimated bytes a row takes in its table: the cell (pointer, sizes, header, ts, series)
# plus the variable parts, times a factor for page headers, fill and interior pages.
ROW_FIXED_BYTES = 16
PAGE_FACTOR = 1.08
DEFAULT_ROW_BYTES = 30.0


def encode_value(value: float | str | None, reason: str | None = None) -> tuple[int | float | str | None, int]:
    """(stored value, flag bits): the smallest exact decimal integer form, else the float or text.

    A text value keeps its reason after a newline (a state or an alarm name has none).
    """
    if value is None:
        return None, 0
    if isinstance(value, str):
        return (f"{value}\n{reason}" if reason else value), TEXT_FLAG
    if value != value or value in (_INF, -_INF):
        return float(value), 0
    for decimals in range(MAX_DECIMALS + 1):
        scale = POW10[decimals]
        mantissa = round(value * scale)
        if abs(mantissa) >= _EXACT_INT_LIMIT:
            break
        if mantissa / scale == value:
            return mantissa, decimals << DECIMAL_SHIFT
    return float(value), 0


def decode_text(stored: str) -> tuple[str, str | None]:
    """(value, reason) of a stored text value."""
    value, _, reason = stored.partition("\n")
    return value, reason or None


def decode_value(stored: int | float | str | None, flags: int) -> float | str | None:
    if stored is None:
        return None
    if flags & TEXT_FLAG:
        return decode_text(str(stored))[0]
    decimals = (flags >> DECIMAL_SHIFT) & DECIMAL_MASK
    return stored / POW10[decimals] if decimals else float(stored)


def _int_bytes(v: int) -> int:
    """Bytes SQLite (record format 4) takes for an integer column value."""
    a = -v - 1 if v < 0 else v
    if v in (0, 1):
        return 0
    if a < 1 << 7:
        return 1
    if a < 1 << 15:
        return 2
    if a < 1 << 23:
        return 3
    if a < 1 << 31:
        return 4
    return 6 if a < 1 << 47 else 8


def row_bytes(seq: int, stored: int | float | str | None, flags: int) -> int:
    cost = ROW_FIXED_BYTES + (1 if seq < 1 << 7 else 2 if seq < 1 << 14 else 3 if seq < 1 << 21 else 4)
    if stored is not None:
        if type(stored) is float:
            cost += 8
        elif type(stored) is str:
            cost += len(stored.encode())
        else:
            cost += _int_bytes(stored)  # type: ignore[arg-type]
    return cost + (1 if flags > 1 else 0)
