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
from collections.abc import Sequence
from typing import Any

from edgeagent.clock import PLAUSIBLE_FROM
from edgeagent.model import Quality, StoredReading

CONTENT_TYPE = "application/senml+json"


def _timed(r: StoredReading) -> bool:
    return r.boot is None and r.ts >= PLAUSIBLE_FROM


def encode(gateway_id: str, readings: Sequence[StoredReading], buffer_id: str = "") -> bytes:
    """The SenML JSON of a batch (uncompressed)."""
    if not readings:
        raise ValueError("empty batch")
    all_timed = all(_timed(r) for r in readings)
    base_t = readings[0].ts if all_timed else 0.0
    records: list[dict[str, Any]] = []
    for i, r in enumerate(readings):
        rec: dict[str, Any] = {}
        if i == 0:
            rec["bn"] = f"{gateway_id}/"
            if all_timed:
                rec["bt"] = base_t
            if buffer_id:
                rec["bid"] = buffer_id
        rec["n"] = f"{r.device}/{r.point}"
        rec["u"] = r.unit
        if isinstance(r.value, str):
            rec["vs"] = r.value
            if r.reason:
                rec["reason"] = r.reason
        elif r.value is not None:
            rec["v"] = r.value
        if _timed(r):
            dt = round(r.ts - base_t, 3)
            if dt:
                rec["t"] = dt
        elif r.boot is not None:
            rec["tq"] = "boot"
            rec["boot"] = r.boot
            rec["up"] = round(r.ts, 3)
        else:
            rec["tq"] = "unknown"
        rec["seq"] = r.seq
        if r.quality != Quality.GOOD:
            rec["q"] = r.quality.name.lower()
        records.append(rec)
    return json.dumps(records, separators=(",", ":"), allow_nan=False).encode()


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
