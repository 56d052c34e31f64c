"""SenML (RFC 8428) JSON for batches of readings, gzip-compressed.

A batch is one SenML pack. The first record carries the base name (the gateway id)
and base time (the first reading's time); every record then carries a relative time.
Two extension fields, neither must-understand (RFC 8428 section 4.4 lets a receiver
that does not know them ignore them):
- ``seq``: the reading's sequence number in the gateway's buffer, so a receiver can
  drop duplicates record by record (at-least-once delivery, exactly-once effect);
- ``q``: the quality, present only when not good ("missing", "uncertain", "invalid").
A missing value is a record without ``v`` but with ``q`` = "missing"; it is never 0.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from typing import Any

from edgeagent.model import Quality, StoredReading

CONTENT_TYPE = "application/senml+json"


def encode(gateway_id: str, readings: Sequence[StoredReading]) -> bytes:
    """The SenML JSON of a batch (uncompressed)."""
    if not readings:
        raise ValueError("empty batch")
    base_t = readings[0].ts
    records: list[dict[str, Any]] = []
    for i, r in enumerate(readings):
        rec: dict[str, Any] = {}
        if i == 0:
            rec["bn"] = f"{gateway_id}/"
            rec["bt"] = base_t
        rec["n"] = f"{r.device}/{r.point}"
        rec["u"] = r.unit
        if r.value is not None:
            rec["v"] = r.value
        dt = round(r.ts - base_t, 3)
        if dt:
            rec["t"] = dt
        rec["seq"] = r.seq
        if r.quality != Quality.GOOD:
            rec["q"] = r.quality.name.lower()
        records.append(rec)
    return json.dumps(records, separators=(",", ":"), allow_nan=False).encode()


def encode_gzip(gateway_id: str, readings: Sequence[StoredReading]) -> bytes:
    """The gzip'd SenML of a batch; mtime is fixed so equal batches are equal bytes."""
    return gzip.compress(encode(gateway_id, readings), compresslevel=6, mtime=0)


def decode(payload: bytes) -> list[dict[str, Any]]:
    """Resolve a SenML pack into records with absolute names and times (for receivers)."""
    records = json.loads(payload)
    if not isinstance(records, list):
        raise ValueError("a SenML pack is a JSON array")
    out = []
    base_name, base_time = "", 0.0
    for rec in records:
        if not isinstance(rec, dict):
            raise ValueError("a SenML record is a JSON object")
        base_name = rec.get("bn", base_name)
        base_time = rec.get("bt", base_time)
        resolved = {k: v for k, v in rec.items() if k not in ("bn", "bt")}
        resolved["n"] = base_name + rec.get("n", "")
        resolved["t"] = base_time + rec.get("t", 0.0)
        out.append(resolved)
    return out
