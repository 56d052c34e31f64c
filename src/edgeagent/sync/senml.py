"""SenML (RFC 8428) JSON for batches of readings, gzip-compressed.

A batch is one SenML pack. The first record carries the base name (the gateway id),
the base time (the first reading's time) and the buffer's identity; every record then
carries a relative time. Extension fields, none must-understand (RFC 8428 section 4.4
lets a receiver that does not know them ignore them):
- ``bid`` (first record only, like ``bn``): the id of the buffer the readings come from;
- ``seq``: the reading's sequence number in that buffer, so a receiver can drop
  duplicates record by record on (gateway, ``bid``, ``seq``): at-least-once delivery,
  exactly-once effect;
- ``q``: the quality, present only when not good ("missing", "uncertain", "invalid");
- ``tq``: present only when the reading has no wall-clock time: ``boot`` (taken before
  the gateway's clock was set; ``boot`` is the kernel's boot id and ``up`` the seconds
  since that boot, so a receiver can place it) or ``unknown``. Such a record has no
  ``t`` of its own, and its pack has no base time; an absolute time below 2**28 (which
  SenML would read as relative to now) is never sent.
A missing value is a record without ``v`` but with ``q`` = "missing"; it is never 0.
A text value (a device's state, an alarm's kind) is ``vs``; ``reason`` says why, in words.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from edgeagent.clock import PLAUSIBLE_FROM
from edgeagent.model import Quality, Reading, StoredReading
from edgeagent.store.numbered import Numbered

CONTENT_TYPE = "application/senml+json"


# '"n":"<device>/<point>","u":"<unit>"' per series: most of a record, the same every time.
_NAMES: dict[tuple[str, str, str], str] = {}
_NAMES_MAX = 4096
_QUALITY = {q: f',"q":"{q.name.lower()}"' for q in Quality if q != Quality.GOOD}
_dumps = json.dumps
_float_repr = float.__repr__


def _timed(r: StoredReading | Reading, boot: str | None) -> bool:
    return boot is None and r.ts >= PLAUSIBLE_FROM


def _name(device: str, point: str, unit: str) -> str:
    key = (device, point, unit)
    text = _NAMES.get(key)
    if text is None:
        text = f'"n":{_dumps(f"{device}/{point}")},"u":{_dumps(unit)}'
        if len(_NAMES) >= _NAMES_MAX:
            _NAMES.clear()
        _NAMES[key] = text
    return text


def _number(v: object) -> str:
    """A JSON number exactly as ``json.dumps`` writes it; NaN and infinities are refused."""
    if type(v) is float:
        if v != v or v in (math.inf, -math.inf):
            raise ValueError(f"Out of range float values are not JSON compliant: {v!r}")
        return _float_repr(v)
    return _dumps(v, allow_nan=False)


def _rows(readings: Sequence[StoredReading]) -> Iterable[tuple[int, StoredReading | Reading, str | None]]:
    if isinstance(readings, Numbered):
        return readings.rows()
    return ((r.seq, r, r.boot) for r in readings)


def encode(gateway_id: str, readings: Sequence[StoredReading], buffer_id: str = "") -> bytes:
    """The SenML JSON of a batch (uncompressed), as ``json.dumps`` of the records would write it.

    Built as text, a record from its series' cached name and unit: five thousand records a
    second through the generic JSON encoder cost more than polling them.
    """
    if not readings:
        raise ValueError("empty batch")
    rows = list(_rows(readings))
    all_timed = all(_timed(r, boot) for _, r, boot in rows)
    base_t = rows[0][1].ts if all_timed else 0.0
    head = f'"bn":{_dumps(f"{gateway_id}/")},'
    if all_timed:
        head += f'"bt":{_number(base_t)},'
    if buffer_id:
        head += f'"bid":{_dumps(buffer_id)},'
    out = []
    for seq, r, boot in rows:
        value = r.value
        if isinstance(value, str):
            v = f',"vs":{_dumps(value)}'
            if r.reason:
                v += f',"reason":{_dumps(r.reason)}'
        elif value is not None:
            v = f',"v":{_number(value)}'
        else:
            v = ""
        if boot is None and r.ts >= PLAUSIBLE_FROM:
            dt = round(r.ts - base_t, 3)
            t = f',"t":{_number(dt)}' if dt else ""
        elif boot is not None:
            t = f',"tq":"boot","boot":{_dumps(boot)},"up":{_number(round(r.ts, 3))}'
        else:
            t = ',"tq":"unknown"'
        q = _QUALITY.get(r.quality, "") if r.quality else ""
        out.append(f'{{{head}{_name(r.device, r.point, r.unit)}{v}{t},"seq":{seq}{q}}}')
        head = ""
    return ("[" + ",".join(out) + "]").encode()


def encode_gzip(gateway_id: str, readings: Sequence[StoredReading], buffer_id: str = "") -> bytes:
    """The gzip'd SenML of a batch; mtime is fixed so equal batches are equal bytes."""
    return gzip.compress(encode(gateway_id, readings, buffer_id), compresslevel=6, mtime=0)


def decode(payload: bytes) -> list[dict[str, Any]]:
    """Resolve a SenML pack into records with absolute names and times (for receivers).

    Each resolved record carries the pack's ``bid``; a record without a wall-clock time
    (``tq`` present) resolves to ``t`` = None rather than a made-up time.
    """
    records = json.loads(payload)
    if not isinstance(records, list):
        raise ValueError("a SenML pack is a JSON array")
    out = []
    base_name, base_time, buffer_id = "", 0.0, ""
    for rec in records:
        if not isinstance(rec, dict):
            raise ValueError("a SenML record is a JSON object")
        base_name = rec.get("bn", base_name)
        base_time = rec.get("bt", base_time)
        buffer_id = rec.get("bid", buffer_id)
        resolved = {k: v for k, v in rec.items() if k not in ("bn", "bt")}
        resolved["n"] = base_name + rec.get("n", "")
        resolved["t"] = None if "tq" in rec else base_time + rec.get("t", 0.0)
        resolved["bid"] = buffer_id
        out.append(resolved)
    return out
