"""Modbus RTU: the frame codec against the vectors and hostile bytes, and pymodbus over a real pty.

The simulator on the pty's master end is a real RTU device for pymodbus: requests are
framed out of the byte stream and CRC-checked, answers carry real CRCs. The lamp
controller, visibility sensor and water-level profiles are polled through it end to end.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.config import parse_config
from edgeagent.devices.modbus import ModbusDevice
from edgeagent.errors import DecodeError, DeviceException, DeviceTimeout, DeviceUnreachable, InvalidWrite
from edgeagent.model import Quality
from edgeagent.profiles import load_profile
from edgeagent.protocols import modbus_rtu as rtu
from edgeagent.protocols.modbus import encode_value
from edgeagent.sim.modbus_rtu import RtuBusSimulator
from edgeagent.sim.modbus_units import LampControllerUnit, SimUnit, VisibilityUnit, WaterLevelUnit
from edgeagent.transports.modbus import ModbusRtuTransport

VECTORS = json.loads((Path(__file__).parent / "vectors" / "modbus_rtu.json").read_text())
FUZZ = settings(max_examples=200, deadline=None)


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# The codec ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["meaning"])
def test_vector_crcs(case: dict[str, str]) -> None:
    frame = _hex(case.get("request_hex") or case["response_hex"])
    assert rtu.crc_ok(frame)
    assert rtu.with_crc(frame[:-2]) == frame


def test_vector_requests_decode() -> None:
    first, _, third = VECTORS["cases"]
    assert rtu.decode_request(_hex(first["request_hex"])) == rtu.RtuRequest(
        unit=26, function=rtu.READ_HOLDING_REGISTERS, address=0, count=1
    )
    request = rtu.decode_request(_hex(third["request_hex"]))
    assert (request.unit, request.address, request.count) == (1, 0, 10)
    assert rtu.encode_read_response(26, rtu.READ_HOLDING_REGISTERS, [1]) == _hex(VECTORS["cases"][1]["response_hex"])


def test_physical_limit_matches_the_reference() -> None:
    request = 8
    response = rtu.read_response_bytes(rtu.READ_HOLDING_REGISTERS, 10)
    assert response == 25
    assert 1 / rtu.transaction_time_s(request, response, 9600) == pytest.approx(24.0)
    even_parity = rtu.bits_per_char(8, "E", 1)
    assert 1 / rtu.transaction_time_s(request, response, 9600, even_parity) == pytest.approx(21.8, 0.01)
    assert 1 / rtu.transaction_time_s(request, response, 19200) == pytest.approx(48.0)
    assert rtu.frame_gap_s(115200) == 0.00175


requests = st.one_of(
    st.builds(
        rtu.RtuRequest,
        unit=st.integers(1, 247),
        function=st.sampled_from(rtu.READ_FUNCTIONS),
        address=st.integers(0, 0xFFFF),
        count=st.integers(1, 125),
    ),
    st.builds(
        lambda unit, address, values: rtu.RtuRequest(
            unit=unit, function=rtu.WRITE_MULTIPLE_REGISTERS, address=address, count=len(values), values=tuple(values)
        ),
        st.integers(0, 247),
        st.integers(0, 0xFFFF),
        st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=123),
    ),
    st.builds(
        lambda unit, address, values: rtu.RtuRequest(
            unit=unit, function=rtu.WRITE_MULTIPLE_COILS, address=address, count=len(values), values=tuple(values)
        ),
        st.integers(0, 247),
        st.integers(0, 0xFFFF),
        st.lists(st.integers(0, 1), min_size=1, max_size=300),
    ),
    st.builds(
        lambda unit, address, value: rtu.RtuRequest(
            unit=unit, function=rtu.WRITE_SINGLE_REGISTER, address=address, count=1, values=(value,)
        ),
        st.integers(0, 247),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
    ),
)


@FUZZ
@given(requests)
def test_request_round_trip(request: rtu.RtuRequest) -> None:
    frame = rtu.encode_request(request)
    assert len(frame) == rtu.request_frame_bytes(request)
    assert rtu.decode_request(frame) == request


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        rtu.decode_request(data)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    data = bytearray(rtu.encode_request(draw(requests)))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "delete", "insert"]))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "delete" and len(data) > 1:
            del data[pos]
        else:
            data.insert(pos, draw(st.integers(0, 255)))
    return bytes(data)


def _feed(framer: rtu.RtuRequestFramer, data: bytes, chunks: list[int]) -> list[rtu.RtuRequest]:
    got: list[rtu.RtuRequest] = []
    pos = i = 0
    while pos < len(data):
        size = chunks[i % len(chunks)]
        got += framer.feed(data[pos : pos + size])
        assert framer.buffered_bytes <= rtu.MAX_FRAME_BYTES
        pos += size
        i += 1
    return got


@FUZZ
@given(st.one_of(st.binary(max_size=400), mutated_frames()), requests, st.lists(st.integers(1, 40), min_size=1))
def test_framer_survives_garbage_and_decodes_the_next_request(
    garbage: bytes, request: rtu.RtuRequest, chunks: list[int]
) -> None:
    """Garbage, the silence that ends any transmission on a line, then a valid request.

    Without the silence RTU is ambiguous by design: a frame cut short by one byte, followed
    by a request starting with that byte's value, is a valid frame. The simulator ends a
    partial frame after a quiet gap (``reset``) just as a device does after 3.5 characters.
    """
    framer = rtu.RtuRequestFramer()
    _feed(framer, garbage, chunks)
    framer.reset()
    assert _feed(framer, rtu.encode_request(request), chunks) == [request]


def test_framer_counts_a_stretch_of_garbage_once() -> None:
    framer = rtu.RtuRequestFramer()
    good = rtu.encode_request(rtu.RtuRequest(unit=1, function=3, address=0, count=2))
    assert framer.feed(b"\xff\xfe\xfd" + good + b"\xff\xff" + good) == [rtu.decode_request(good)] * 2
    assert framer.framing_errors == 2
    assert framer.skipped_bytes == 5


def test_unknown_function_is_framed_by_its_crc() -> None:
    framer = rtu.RtuRequestFramer()
    (request,) = framer.feed(rtu.with_crc(bytes([7, 0x2B, 0x0E, 0x01, 0x00])))
    assert (request.unit, request.function, request.known) == (7, 0x2B, False)


# pymodbus over a pty ------------------------------------------------------------------


@pytest.fixture
async def line() -> AsyncIterator[RtuBusSimulator]:
    units: dict[int, SimUnit] = {1: WaterLevelUnit(), 20: VisibilityUnit(seed=1), 31: LampControllerUnit(dim_level=70)}
    async with RtuBusSimulator(units, baudrate=19200, line_timing=False) as sim:
        yield sim
    # The simulator fails any test whose reads touched a range a profile forbids.
    assert sim.forbidden_reads == []


@pytest.fixture
async def transport(line: RtuBusSimulator) -> AsyncIterator[ModbusRtuTransport]:
    t = ModbusRtuTransport(line.port, baudrate=19200, timeout_s=0.3)
    yield t
    await t.close()


def _device(profile: str, unit_id: int) -> ModbusDevice:
    site = parse_config(
        {
            "gateway": {"id": "gw"},
            "buses": [{"name": "b", "kind": "modbus_rtu", "port": "/dev/null"}],
            "devices": [
                {
                    "id": "d",
                    "profile": profile,
                    "bus": "b",
                    "unit_id": unit_id,
                    "asset": {"location": "x", "owner": "y"},
                }
            ],
        }
    )
    return ModbusDevice(site.devices[0], load_profile(profile), bus_timeout_s=0.3)


async def _direct(op: object) -> object:
    return await op()  # type: ignore[operator]


async def test_lamp_controller_polls_coils_bits_enums_and_uint32(
    line: RtuBusSimulator, transport: ModbusRtuTransport
) -> None:
    device = _device("smart_lamp_controller", 31)
    readings = {r.point: r for r in await device.poll(transport, _direct)}
    assert readings["dim_level"].value == 70 and readings["dim_level"].unit == "%"
    assert readings["lamp_on"].value == 1.0 and readings["door_open"].value == 0.0
    assert readings["mode"].value == 1.0
    assert device.labels(list(readings.values()))["mode"] == "schedule"
    assert 225 < readings["voltage"].value < 235
    assert readings["power"].value == pytest.approx(84.0, abs=0.1)
    assert readings["energy"].value == pytest.approx(123.46, abs=0.02)
    assert readings["lamp_failure"].value == 0.0
    line.units[31].failed = True  # type: ignore[attr-defined]
    readings = {r.point: r for r in await device.poll(transport, _direct)}
    assert readings["lamp_failure"].value == 1.0 and readings["power"].value == 0.0


async def test_lamp_writes_registers_coils_and_enum_labels(
    line: RtuBusSimulator, transport: ModbusRtuTransport
) -> None:
    device = _device("smart_lamp_controller", 31)
    lamp = line.units[31]
    await device.write(transport, device.plan_write("dim_level", "40"), _direct)
    await device.write(transport, device.plan_write("mode", "remote"), _direct)
    await device.write(transport, device.plan_write("lamp_on", "off"), _direct)
    assert lamp.tables["holding"][:2] == [40, 2]
    assert lamp.tables["coil"][0] == 0
    readings = {r.point: r.value for r in await device.poll(transport, _direct)}
    assert readings["dim_level"] == 40 and readings["lamp_on"] == 0.0 and readings["power"] == 0.0


def test_bad_writes_are_refused_before_the_bus() -> None:
    device = _device("smart_lamp_controller", 31)
    with pytest.raises(InvalidWrite, match="above the maximum 100"):
        device.plan_write("dim_level", 150)
    with pytest.raises(InvalidWrite, match="read-only"):
        device.plan_write("voltage", 230)
    with pytest.raises(InvalidWrite, match="no point 'brightness'; writable: dim_level, lamp_on, mode"):
        device.plan_write("brightness", 1)
    with pytest.raises(InvalidWrite, match="not one of"):
        device.plan_write("mode", 7)
    with pytest.raises(InvalidWrite, match="on/off"):
        device.plan_write("lamp_on", "maybe")
    with pytest.raises(InvalidWrite, match="not a number"):
        device.plan_write("dim_level", "bright")


async def test_device_exception_names_unit_and_address(line: RtuBusSimulator, transport: ModbusRtuTransport) -> None:
    with pytest.raises(DeviceException, match=r"unit 31 at /dev/pts/\d+ answered exception 03 \(illegal data value\)"):
        # The device refuses a mode its profile does not know; the error says who and where.
        await transport.write_registers(1, [9], 31)
    with pytest.raises(DeviceException, match=r"exception 02 \(illegal data address\) to holding read 500\+2"):
        await transport.read("holding", 500, 2, 31)


async def test_visibility_float32_cdab_and_forbidden_gap(line: RtuBusSimulator, transport: ModbusRtuTransport) -> None:
    device = _device("generic_visibility_modbus", 20)
    # Input 4-7 is forbidden: the plan reads around it, never through it.
    assert [(s.function, s.start, s.count) for s in device.spans] == [("input", 0, 4), ("input", 8, 3)]
    unit = line.units[20]
    unit.status_bits = 0b101  # type: ignore[attr-defined]
    readings = {r.point: r for r in await device.poll(transport, _direct)}
    assert 10 <= readings["visibility_1min"].value <= 10_100
    assert readings["window_contaminated"].value == 1.0 and readings["heater_fault"].value == 0.0
    assert readings["sensor_fault"].value == 1.0
    assert readings["temperature"].unit == "Cel"


async def test_simulator_catches_a_read_inside_a_forbidden_range(transport: ModbusRtuTransport) -> None:
    unit = VisibilityUnit(seed=2)
    async with RtuBusSimulator({20: unit}, baudrate=19200, line_timing=False) as sim:
        naive = ModbusRtuTransport(sim.port, baudrate=19200, timeout_s=0.3)
        try:
            with pytest.raises(DeviceException, match="exception 02"):
                await naive.read("input", 0, 11, 20)  # what one merged read ignoring the profile would do
        finally:
            await naive.close()
    assert sim.forbidden_reads == [(20, "input", 0, 11)]


@pytest.mark.parametrize("order", ["ABCD", "CDAB", "BADC", "DCBA"])
async def test_float32_word_orders_round_trip_over_the_line(order: str) -> None:
    unit = SimUnit(holding=2, writable=[("holding", 0), ("holding", 1)])
    async with RtuBusSimulator({5: unit}, baudrate=19200, line_timing=False) as sim:
        t = ModbusRtuTransport(sim.port, baudrate=19200, timeout_s=0.3)
        try:
            await t.write_registers(0, encode_value(-123.456, "float32", order), 5)  # type: ignore[arg-type]
            words = await t.read("holding", 0, 2, 5)
        finally:
            await t.close()
    from edgeagent.protocols.modbus import decode_value

    assert math.isclose(decode_value(words, "float32", order), -123.456, rel_tol=1e-6)  # type: ignore[arg-type]


async def test_missing_raw_value_becomes_an_absent_reading(transport: ModbusRtuTransport) -> None:
    from edgeagent.sim.modbus_units import Urm13Unit

    unit = Urm13Unit()
    async with RtuBusSimulator({13: unit}, baudrate=19200, line_timing=False) as sim:
        t = ModbusRtuTransport(sim.port, baudrate=19200, timeout_s=0.3)
        device = _device("urm13_ultrasonic", 13)
        try:
            echo = {r.point: r for r in await device.poll(t, _direct)}
            unit.no_echo = True
            none = {r.point: r for r in await device.poll(t, _direct)}
        finally:
            await t.close()
    assert echo["distance"].value is not None and echo["distance"].quality == Quality.GOOD
    assert none["distance"].value is None and none["distance"].quality == Quality.MISSING
    assert none["temperature"].value is not None


async def test_silent_unit_times_out_and_missing_port_is_unreachable(
    line: RtuBusSimulator, transport: ModbusRtuTransport
) -> None:
    with pytest.raises(DeviceTimeout, match="no answer from unit 99"):
        await transport.read("holding", 0, 1, 99, timeout_s=0.1)
    assert await transport.read("holding", 3, 4, 1)  # the line is fine for the next unit
    gone = ModbusRtuTransport("/dev/does-not-exist", baudrate=9600, timeout_s=0.1)
    with pytest.raises(DeviceUnreachable, match=r"cannot open /dev/does-not-exist: .*No such file"):
        await gone.read("holding", 0, 1, 1)
    with pytest.raises(DeviceUnreachable, match="next try in"):
        await gone.read("holding", 0, 1, 1)  # backing off, not hammering the port
    await gone.close()


async def test_parity_on_a_pty_is_a_clear_error(line: RtuBusSimulator) -> None:
    # A pty refuses parity when nothing else in the request changes (Linux applies what it can).
    serial.Serial(line.port, baudrate=9600).close()
    t = ModbusRtuTransport(line.port, baudrate=9600, parity="E", timeout_s=0.1)
    with pytest.raises(DeviceUnreachable, match="refuses these settings"):
        await t.read("holding", 0, 1, 1)
    await t.close()


async def test_multiple_coils_and_registers_are_written_with_functions_15_and_16() -> None:
    unit = SimUnit(holding=4, coils=3, writable=[("coil", i) for i in range(3)] + [("holding", i) for i in range(4)])
    async with RtuBusSimulator({9: unit}, baudrate=19200, line_timing=False) as sim:
        t = ModbusRtuTransport(sim.port, baudrate=19200, timeout_s=0.3)
        try:
            await t.write_coils(0, [True, False, True], 9)
            await t.write_registers(0, [1, 2, 3, 4], 9)
            assert await t.read("coil", 0, 3, 9) == [1, 0, 1]
        finally:
            await t.close()
    assert unit.tables["coil"] == [1, 0, 1] and unit.tables["holding"] == [1, 2, 3, 4]
    assert [fc for _, fc, _, _ in sim.log] == [rtu.WRITE_MULTIPLE_COILS, rtu.WRITE_MULTIPLE_REGISTERS, rtu.READ_COILS]
