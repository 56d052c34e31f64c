"""The SenML encoder writes text itself (for speed): byte for byte what ``json.dumps`` of the records writes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.clock import PLAUSIBLE_FROM
from edgeagent.model import Priority, Quality, Reading, StoredReading
from edgeagent.store.numbered import Numbered
from edgeagent.sync.senml import decode, encode

BOOT = "5b1e1d3a-0000-4000-8000-00000000b007"


def reference(gateway_id: str, readings: Sequence[StoredReading], buffer_id: str = "") -> bytes:
    """The encoder as it was: a dict per record, then ``json.dumps``."""

    def timed(r: StoredReading) -> bool:
        return r.boot is None and r.ts >= PLAUSIBLE_FROM

    all_timed = all(timed(r) for r in readings)
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
        if timed(r):
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


names = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
values = st.one_of(
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**40), 2**40).map(lambda i: i / 10),
    st.text(max_size=20),
)
times = st.one_of(
    st.floats(PLAUSIBLE_FROM, PLAUSIBLE_FROM + 1e9),
    st.floats(0, 1e6),  # seconds since boot, or a 1970 clock
)
readings = st.builds(
    lambda device, point, unit, ts, value, quality, booted, reason: Reading(
        device,
        point,
        ts,
        value,
        unit,
        Quality(quality),
        boot_relative=booted,
        reason=reason if isinstance(value, str) else None,
    ),
    names,
    names,
    st.text(max_size=6),
    times,
    values,
    st.integers(0, 3),
    st.booleans(),
    st.one_of(st.none(), st.text(max_size=30)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(readings, min_size=1, max_size=8), st.sampled_from(["", "3f9c0e7a5b2d4c18"]))
def test_records_are_what_json_dumps_would_write(batch: list[Reading], buffer_id: str) -> None:
    part = Numbered(Priority.TELEMETRY, BOOT)
    for i, r in enumerate(batch, 100):
        part.append(i, r)
    stored = list(part)
    expected = reference("gw-0042", stored, buffer_id)
    assert encode("gw-0042", stored, buffer_id) == expected
    assert encode("gw-0042", part, buffer_id) == expected


def test_a_value_json_cannot_carry_is_refused_as_before() -> None:
    r = StoredReading(1, "d", "p", PLAUSIBLE_FROM + 1, float("nan"), "mm", Quality.GOOD, Priority.TELEMETRY)
    with pytest.raises(ValueError, match="not JSON compliant"):
        reference("gw", [r])
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode("gw", [r])


def test_a_pack_decodes_to_absolute_names_times_and_its_buffer() -> None:
    part = Numbered(Priority.TELEMETRY, BOOT)
    part.append(7, Reading("wl-01", "water_level", 1_767_225_600.5, 41.5, "mm"))
    part.append(8, Reading("wl-01", "water_level", 1_767_225_601.0, None, "mm", Quality.MISSING))
    first, second = decode(encode("gw-0042", part, "3f9c0e7a5b2d4c18"))
    assert first == {
        "n": "gw-0042/wl-01/water_level",
        "u": "mm",
        "v": 41.5,
        "seq": 7,
        "t": 1_767_225_600.5,
        "bid": "3f9c0e7a5b2d4c18",
    }
    assert second["t"] == 1_767_225_601.0 and second["q"] == "missing" and "v" not in second


def test_every_record_decodes_with_its_packs_buffer_and_a_record_without_wall_time_to_no_time() -> None:
    part = Numbered(Priority.TELEMETRY, BOOT)
    part.append(7, Reading("wl-01", "water_level", 1_767_225_600.5, 41.5, "mm"))
    part.append(8, Reading("wl-01", "water_level", 1_767_225_601.0, 42.0, "mm"))
    first, second = decode(encode("gw-0042", part, "3f9c0e7a5b2d4c18"))
    assert first["bid"] == second["bid"] == "3f9c0e7a5b2d4c18", "a receiver keys every record on its buffer"
    booted = Numbered(Priority.TELEMETRY, BOOT)
    booted.append(9, Reading("wl-01", "water_level", 812.25, 40.0, "mm", boot_relative=True))
    (record,) = decode(encode("gw-0042", booted, "3f9c0e7a5b2d4c18"))
    assert record["t"] is None and record["tq"] == "boot" and record["up"] == 812.25, "never a made-up time"
