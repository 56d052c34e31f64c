"""Modbus RTU framing and line timing: pure functions, no I/O.

Facts used (Modbus over Serial Line v1.02; ../shared/REFERENCE.md):
- An RTU frame is ``unit | function | data | CRC``; the CRC is CRC-16/MODBUS
  (reflected polynomial 0xA001, initial value 0xFFFF) sent low byte first. A frame is
  at most 256 bytes. Unit 0 is broadcast (writes only, never answered).
- Requests have a length fixed by their function code: 01-06 are 8 bytes; 15 and 16
  carry a byte count at offset 6 and are ``9 + byte count`` bytes.
- Responses: 01-04 carry a byte count at offset 2 (``5 + byte count`` bytes); 05, 06,
  15, 16 echo 8 bytes; an exception is ``function | 0x80`` and a code, 5 bytes.
- Character time is ``bits per character / baud``: 10 bits for 8N1, 11 for 8E1, 8O1 and
  8N2. Frames are separated by at least 3.5 character times of silence; above
  19200 baud the gap is fixed at 1.75 ms.

The agent's own RTU client is pymodbus; this module serves the simulator (which must
frame requests out of a byte stream and answer them) and the tests and benchmarks that
need exact frame sizes and timings.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeagent.errors import DecodeError
from edgeagent.protocols._stream import StreamBuffer

MAX_FRAME_BYTES = 256
BROADCAST_UNIT = 0
MAX_UNIT = 247
EXCEPTION_FLAG = 0x80

READ_COILS = 0x01
READ_DISCRETE_INPUTS = 0x02
READ_HOLDING_REGISTERS = 0x03
READ_INPUT_REGISTERS = 0x04
WRITE_SINGLE_COIL = 0x05
WRITE_SINGLE_REGISTER = 0x06
WRITE_MULTIPLE_COILS = 0x0F
WRITE_MULTIPLE_REGISTERS = 0x10

READ_FUNCTIONS = (READ_COILS, READ_DISCRETE_INPUTS, READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS)
BIT_FUNCTIONS = (READ_COILS, READ_DISCRETE_INPUTS)
_FIXED_REQUEST = (*READ_FUNCTIONS, WRITE_SINGLE_COIL, WRITE_SINGLE_REGISTER)
_MULTIPLE_WRITES = (WRITE_MULTIPLE_COILS, WRITE_MULTIPLE_REGISTERS)
_LIMITS = {
    READ_COILS: 2000,
    READ_DISCRETE_INPUTS: 2000,
    READ_HOLDING_REGISTERS: 125,
    READ_INPUT_REGISTERS: 125,
    WRITE_MULTIPLE_COILS: 1968,
    WRITE_MULTIPLE_REGISTERS: 123,
}
_COIL_ON = 0xFF00
_FAST_LINE_BAUD = 19200
_FAST_LINE_GAP_S = 0.00175


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS of ``data``; on the wire it goes low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    """``body`` followed by its CRC, as sent."""
    return body + crc16(body).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    """Whether a whole frame's last two bytes are the CRC of the rest."""
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def bits_per_char(bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> int:
    """Bits one character takes on the line: start bit, data, parity, stop bits."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


def char_time_s(baudrate: int, bits: int = 10) -> float:
    """Time one character takes on the line."""
    return bits / baudrate


def frame_gap_s(baudrate: int, bits: int = 10) -> float:
    """The silence that ends a frame: 3.5 characters, fixed at 1.75 ms above 19200 baud."""
    if baudrate > _FAST_LINE_BAUD:
        return _FAST_LINE_GAP_S
    return 3.5 * char_time_s(baudrate, bits)


def transaction_time_s(request_bytes: int, response_bytes: int, baudrate: int, bits: int = 10) -> float:
    """Shortest time one request and its answer occupy the line, both frame gaps included."""
    return (request_bytes + response_bytes) * char_time_s(baudrate, bits) + 2 * frame_gap_s(baudrate, bits)


def request_frame_bytes(request: RtuRequest) -> int:
    """Size of a request's frame on the wire (an unknown function's minimum, 4)."""
    if not request.known:
        return 4
    if request.function == WRITE_MULTIPLE_REGISTERS:
        return 9 + 2 * request.count
    if request.function == WRITE_MULTIPLE_COILS:
        return 9 + (request.count + 7) // 8
    return 8


def read_response_bytes(function: int, count: int) -> int:
    """Size of the answer to a read of ``count`` registers or bits."""
    data = (count + 7) // 8 if function in BIT_FUNCTIONS else 2 * count
    return 5 + data


@dataclass(frozen=True, slots=True, kw_only=True)
class RtuRequest:
    """A request as a device sees it.

    For reads, ``count`` registers or bits from ``address``; for writes, ``values`` (a
    single write has one value; coils are 0 or 1). ``function`` may be one this module
    does not know (``known`` is then False); such a frame was recognised by its CRC.
    """

    unit: int
    function: int
    address: int = 0
    count: int = 0
    values: tuple[int, ...] = ()
    known: bool = True


def encode_request(request: RtuRequest) -> bytes:
    """Build the frame a master sends (for tests and the scan benchmark)."""
    fc = request.function
    head = bytes([request.unit, fc]) + request.address.to_bytes(2, "big")
    if fc in READ_FUNCTIONS:
        _check_count(fc, request.count)
        return with_crc(head + request.count.to_bytes(2, "big"))
    if fc == WRITE_SINGLE_COIL:
        (value,) = request.values
        return with_crc(head + (_COIL_ON if value else 0).to_bytes(2, "big"))
    if fc == WRITE_SINGLE_REGISTER:
        (value,) = request.values
        return with_crc(head + value.to_bytes(2, "big"))
    if fc == WRITE_MULTIPLE_REGISTERS:
        _check_count(fc, len(request.values))
        data = b"".join(v.to_bytes(2, "big") for v in request.values)
        return with_crc(head + len(request.values).to_bytes(2, "big") + bytes([len(data)]) + data)
    if fc == WRITE_MULTIPLE_COILS:
        _check_count(fc, len(request.values))
        data = pack_bits(request.values)
        return with_crc(head + len(request.values).to_bytes(2, "big") + bytes([len(data)]) + data)
    raise ValueError(f"cannot encode function {fc}")


def _check_count(function: int, count: int) -> None:
    if not 1 <= count <= _LIMITS[function]:
        raise ValueError(f"function {function} takes 1..{_LIMITS[function]} items, got {count}")


def request_length(buffer: bytes | bytearray) -> int | None:
    """Length of the request at the start of ``buffer``; None if not known yet or ever.

    None means either that more bytes are needed (a multiple write whose byte count has
    not arrived) or that the function code gives no length (an unknown function).
    """
    if len(buffer) < 2:
        return None
    fc = buffer[1]
    if fc in _FIXED_REQUEST:
        return 8
    if fc in _MULTIPLE_WRITES:
        return 9 + buffer[6] if len(buffer) >= 7 else None
    return None


def decode_request(frame: bytes) -> RtuRequest:
    """Decode one complete request frame, CRC included; raise DecodeError if it is not one."""
    data = bytes(frame)
    if len(data) < 4 or len(data) > MAX_FRAME_BYTES:
        raise DecodeError(f"RTU frame of {len(data)} bytes")
    if not crc_ok(data):
        raise DecodeError("RTU frame CRC mismatch")
    unit, fc = data[0], data[1]
    if unit > MAX_UNIT:
        raise DecodeError(f"unit id {unit} out of range")
    expected = request_length(data)
    if expected is None:
        if fc in _MULTIPLE_WRITES:
            raise DecodeError(f"function {fc} request too short")
        return RtuRequest(unit=unit, function=fc, known=False)
    if len(data) != expected:
        raise DecodeError(f"function {fc} request is {expected} bytes, got {len(data)}")
    address = int.from_bytes(data[2:4], "big")
    word = int.from_bytes(data[4:6], "big")
    if fc in READ_FUNCTIONS:
        if not 1 <= word <= _LIMITS[fc]:
            raise DecodeError(f"function {fc} count {word} out of range")
        return RtuRequest(unit=unit, function=fc, address=address, count=word)
    if fc == WRITE_SINGLE_COIL:
        if word not in (0, _COIL_ON):
            raise DecodeError(f"single coil value must be 0x0000 or 0xFF00, got 0x{word:04X}")
        return RtuRequest(unit=unit, function=fc, address=address, count=1, values=(1 if word else 0,))
    if fc == WRITE_SINGLE_REGISTER:
        return RtuRequest(unit=unit, function=fc, address=address, count=1, values=(word,))
    payload = data[7:-2]
    if fc == WRITE_MULTIPLE_REGISTERS:
        if not 1 <= word <= _LIMITS[fc] or len(payload) != 2 * word:
            raise DecodeError(f"write of {word} registers carries {len(payload)} bytes")
        values = tuple(int.from_bytes(payload[i : i + 2], "big") for i in range(0, len(payload), 2))
        return RtuRequest(unit=unit, function=fc, address=address, count=word, values=values)
    if not 1 <= word <= _LIMITS[fc] or len(payload) != (word + 7) // 8:
        raise DecodeError(f"write of {word} coils carries {len(payload)} bytes")
    return RtuRequest(unit=unit, function=fc, address=address, count=word, values=unpack_bits(payload, word))


def pack_bits(bits: tuple[int, ...] | list[int]) -> bytes:
    """Coil values, first coil in the lowest bit of the first byte."""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def unpack_bits(data: bytes, count: int) -> tuple[int, ...]:
    """The first ``count`` bits of packed coil data."""
    return tuple((data[i // 8] >> (i % 8)) & 1 for i in range(count))


def encode_read_response(unit: int, function: int, values: list[int] | tuple[int, ...]) -> bytes:
    """A device's answer to a read: registers (0..0xFFFF) or bits (0/1)."""
    if function in BIT_FUNCTIONS:
        data = pack_bits(values)
    elif function in (READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS):
        data = b"".join(v.to_bytes(2, "big") for v in values)
    else:
        raise ValueError(f"function {function} is not a read")
    return with_crc(bytes([unit, function, len(data)]) + data)


def encode_write_response(request: RtuRequest) -> bytes:
    """A device's answer to a write: single writes echo, multiple writes echo address and count."""
    fc = request.function
    head = bytes([request.unit, fc]) + request.address.to_bytes(2, "big")
    if fc == WRITE_SINGLE_COIL:
        return with_crc(head + (_COIL_ON if request.values[0] else 0).to_bytes(2, "big"))
    if fc == WRITE_SINGLE_REGISTER:
        return with_crc(head + request.values[0].to_bytes(2, "big"))
    if fc in _MULTIPLE_WRITES:
        return with_crc(head + request.count.to_bytes(2, "big"))
    raise ValueError(f"function {fc} is not a write")


def encode_exception(unit: int, function: int, code: int) -> bytes:
    """An exception response: the function with its top bit set, then the code."""
    return with_crc(bytes([unit, (function | EXCEPTION_FLAG) & 0xFF, code]))


class RtuRequestFramer(StreamBuffer):
    """Cuts requests out of bytes that arrive in arbitrary chunks, as a device on the bus does.

    A request is recognised by the length its function code implies and a matching CRC.
    An unknown function code is accepted when everything buffered so far makes one
    frame with a good CRC (on a real line the 3.5-character silence ends it). On a bad
    CRC or an impossible header the framer slides one byte and tries again;
    ``framing_errors`` counts losses of sync, ``skipped_bytes`` the bytes dropped. The
    buffer never holds more than one maximum-size frame.
    """

    def feed(self, data: bytes) -> list[RtuRequest]:
        """Add received bytes; return the requests they completed, oldest first."""
        self._buffer += data
        out: list[RtuRequest] = []
        buffer = self._buffer
        while len(buffer) >= 2:
            length = request_length(buffer)
            if buffer[0] > MAX_UNIT or (length is not None and length > MAX_FRAME_BYTES):
                self._discard(1)
                continue
            if length is not None and len(buffer) >= length:
                try:
                    out.append(self._take(length))
                except DecodeError:
                    self._discard(1)
                continue
            if length is None and buffer[1] not in _MULTIPLE_WRITES and crc_ok(bytes(buffer)):
                out.append(self._take(len(buffer)))
                continue
            # Incomplete, or an unknown function: a whole valid request further on means
            # the bytes before it were garbage (a real device would have seen the silence).
            later = self._later_frame()
            if later is None:
                break
            self._discard(later)
        if len(buffer) > MAX_FRAME_BYTES:
            self._discard(len(buffer) - MAX_FRAME_BYTES)
        return out

    def _later_frame(self) -> int | None:
        """Offset of the first complete, valid, known request after the buffer's start."""
        buffer = self._buffer
        for start in range(1, len(buffer) - 3):
            length = request_length(buffer[start : start + 7])
            if length is None or start + length > len(buffer) or buffer[start] > MAX_UNIT:
                continue
            try:
                decode_request(bytes(buffer[start : start + length]))
            except DecodeError:
                continue
            return start
        return None

    def _take(self, length: int) -> RtuRequest:
        request = decode_request(bytes(self._buffer[:length]))
        del self._buffer[:length]
        self._resynced()
        return request
