"""Pure Modbus value decoding and read planning, against the shared vectors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeagent.errors import DecodeError
from edgeagent.protocols.modbus import ReadSpan, decode_value, encode_value, plan_reads

VECTORS = json.loads((Path(__file__).parent / "vectors" / "modbus_rtu.json").read_text())
ORDERS = VECTORS["float32_word_orders"]


@pytest.mark.parametrize("order", ["ABCD", "CDAB", "BADC", "DCBA"])
def test_float32_word_orders_match_vectors(order: str) -> None:
    registers = [int(h, 16) for h in ORDERS[order]]
    assert decode_value(registers, "float32", order) == pytest.approx(ORDERS["value"], abs=1e-4)
    assert encode_value(ORDERS["value"], "float32", order) == registers


@pytest.mark.parametrize("order", ["ABCD", "CDAB", "BADC", "DCBA"])
@pytest.mark.parametrize(("data_type", "value"), [("int32", -123456789), ("uint32", 0xDEADBEEF), ("int16", -2)])
def test_integer_round_trip(order: str, data_type: str, value: int) -> None:
    assert decode_value(encode_value(value, data_type, order), data_type, order) == value  # type: ignore[arg-type]


def test_int16_sign() -> None:
    assert decode_value([0xFFFE], "int16") == -2
    assert decode_value([0xFFFE], "uint16") == 0xFFFE


def test_wrong_register_count_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="needs 2"):
        decode_value([1], "float32")


def test_value_that_does_not_fit_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="does not fit"):
        encode_value(70000, "int16")


def test_adjacent_and_small_gaps_merge_into_one_request() -> None:
    spans = plan_reads([("holding", 6, 1), ("holding", 4, 1), ("holding", 3, 1)], max_gap=4)
    assert spans == [ReadSpan(function="holding", start=3, count=4)]


def test_gap_over_budget_splits() -> None:
    spans = plan_reads([("holding", 0, 2), ("holding", 20, 2)], max_gap=8)
    assert [(s.start, s.count) for s in spans] == [(0, 2), (20, 2)]


def test_forbidden_range_is_never_bridged() -> None:
    spans = plan_reads([("holding", 1, 1), ("holding", 3, 1)], max_gap=8, forbidden=[("holding", 2, 2)])
    assert [(s.start, s.count) for s in spans] == [(1, 1), (3, 1)]
    for s in spans:
        assert not (s.start <= 2 < s.end)


def test_functions_are_planned_separately() -> None:
    spans = plan_reads([("holding", 0, 1), ("input", 1, 1)], max_gap=8)
    assert {(s.function, s.start) for s in spans} == {("holding", 0), ("input", 1)}


def test_request_never_exceeds_125_registers() -> None:
    wanted = [("holding", a, 2) for a in range(0, 400, 2)]
    spans = plan_reads(wanted, max_gap=0)  # type: ignore[arg-type]
    assert all(s.count <= 125 for s in spans)
    covered = {a for s in spans for a in range(s.start, s.end)}
    assert covered == set(range(400))


def test_wanted_inside_forbidden_is_rejected() -> None:
    with pytest.raises(DecodeError, match="forbidden"):
        plan_reads([("holding", 2, 1)], max_gap=0, forbidden=[("holding", 2, 2)])
