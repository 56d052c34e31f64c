"""Vaisala PWD22/52 visibility and present-weather sensor, polled mode.

Spec facts used (PWD22/52 User's Guide M210543EN; message 7 is "the same as FD12P
message 7", FD12P User's Guide M210296EN):

- Line: 9600 baud 7E1 on RS-485. Poll: CR ENQ "PW" SP id SP message CR, e.g.
  ``b"\\r\\x05PW 1 2\\r"``; "FD" is accepted in place of "PW". No echo.
- Reply: SOH "PW" SP id STX body ETX CR LF. The id is two characters, right aligned
  (an undefined id shows as space and "1", hence ``"PW  1"``).
- Message 2 body: ``status vis_1min vis_10min nws wmo wmo_15min wmo_1h intensity
  water_sum snow_sum``, e.g. ``00 1839 1505 R- 61 61 61 0.33 12.16 0``. Status digit 1
  is the visibility alarm (0..3), digit 2 the hardware state (0 ok, 1 error,
  2 warning, 3 backscatter alarm, 4 backscatter warning). Visibility in m, intensity
  in mm/h (1 min average), water and snow sums in mm. A value the sensor cannot give
  is printed as a run of slashes (``/////``); it becomes ``None``, never zero.
- Message 7: the message 2 fields, then temperature (°C) and background luminance
  (cd/m²) on the same line; then a line of instant METAR weather codes (``-RA``) and
  a line of recent METAR weather (``RERA``). Every line ends CR LF, the METAR lines
  may be empty, and luminance may be slashes when no luminance meter is fitted.

Assumptions (message 7 is documented only by example): tokens on the first line are
separated by any run of spaces; temperature and luminance may be absent from the end
of the first line (they become ``None`` and are flagged missing); a METAR line that is
present but blank means "no codes reported" and decodes to ``""``, a METAR line that
is absent altogether decodes to ``None`` and is flagged missing.

The framer ends a frame at ETX and returns ``SOH ... ETX``; the CR LF trailer, and
any CR or LF between frames, is dropped without counting as garbage, so a frame is
handed over without waiting for bytes that some firmware never sends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from edgeagent.errors import DecodeError
from edgeagent.protocols._stream import StreamBuffer

SOH = 0x01
STX = 0x02
ETX = 0x03
ENQ = 0x05

DEFAULT_MAX_FRAME_BYTES = 1024
"""Several times the longest message decoded here (message 7 is about 100 bytes), small
enough that a stream of garbage never holds much memory."""

_SENSOR_ID = re.compile(r"[0-9A-Za-z]{1,2}")
_HEADER = re.compile(r"(?:PW|FD) +([0-9A-Za-z]{1,2})")
_POLL = re.compile(rb"\r?\x05(?:PW|FD) +([0-9A-Za-z]{1,2}) +([0-9]{1,2})\r")
_PRINTABLE = re.compile(rb"[\x20-\x7e\r\n]*")
_UINT = re.compile(r"[0-9]{1,9}")
_DECIMAL = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,6})?")
_SIGNED_DECIMAL = re.compile(r"[+-]?[0-9]{1,9}(?:\.[0-9]{1,6})?")
_WMO_CODE = re.compile(r"[0-9]{1,2}")
_NWS_CODE = re.compile(r"[A-Z]{1,4}[+-]?")
_MESSAGE2_TOKENS = 10
_MAX_VISIBILITY_ALARM = 3
_MAX_HARDWARE_STATUS = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class PwdPoll:
    """A decoded poll command, as a simulated sensor sees it."""

    sensor_id: str
    message: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PwdMessage2:
    """Message 2; ``missing`` names every field the sensor reported as slashes."""

    sensor_id: str
    visibility_alarm: int | None
    hardware_status: int | None
    visibility_1min_m: int | None
    visibility_10min_m: int | None
    nws_code: str | None
    wmo_present_weather: int | None
    wmo_15min: int | None
    wmo_1h: int | None
    precipitation_intensity_mm_h: float | None
    water_sum_mm: float | None
    snow_sum_mm: float | None
    missing: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        # Derived rather than passed in, so the quality flag can never disagree with
        # the values it describes.
        absent = frozenset(f.name for f in fields(self) if f.init and getattr(self, f.name) is None)
        object.__setattr__(self, "missing", absent)


@dataclass(frozen=True, slots=True, kw_only=True)
class PwdMessage7(PwdMessage2):
    """Message 7: message 2 plus temperature, luminance and the two METAR lines."""

    temperature_c: float | None
    luminance_cd_m2: float | None
    metar_present_weather: str | None
    metar_recent_weather: str | None


def encode_poll(sensor_id: str, message: int) -> bytes:
    """Build the poll command for one sensor id and message number."""
    if not _SENSOR_ID.fullmatch(sensor_id):
        raise ValueError(f"sensor id must be 1-2 letters or digits, got {sensor_id!r}")
    if not 0 <= message <= 99:
        raise ValueError(f"message number must be 0..99, got {message}")
    return f"\r\x05PW {sensor_id} {message}\r".encode("ascii")


def decode_poll(data: bytes) -> PwdPoll:
    """Parse a poll command; simulators use it to answer like a sensor."""
    match = _POLL.fullmatch(bytes(data))
    if match is None:
        raise DecodeError(f"not a PWD poll command: {bytes(data)!r:.80}")
    return PwdPoll(sensor_id=match[1].decode("ascii"), message=int(match[2]))


def encode_frame(sensor_id: str, body: str) -> bytes:
    """Wrap a message body the way the sensor does (for simulators and tests)."""
    if not _SENSOR_ID.fullmatch(sensor_id):
        raise ValueError(f"sensor id must be 1-2 letters or digits, got {sensor_id!r}")
    raw = body.encode("ascii")
    if not _PRINTABLE.fullmatch(raw):
        raise ValueError("body must be printable ASCII, CR and LF")
    return b"\x01PW " + f"{sensor_id:>2}".encode("ascii") + b"\x02" + raw + b"\x03\r\n"


class PwdFramer(StreamBuffer):
    """Cuts ``SOH ... ETX`` replies out of bytes that arrive in arbitrary chunks.

    Bytes outside a frame are skipped and counted; ``framing_errors`` counts losses of
    sync (a run of garbage, a frame cut short by the next SOH, an overlong frame),
    however many chunks the bad bytes came in. The buffer never holds more than
    ``max_frame_bytes`` between calls.
    """

    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 3:
            raise ValueError("max_frame_bytes must allow at least SOH STX ETX")
        super().__init__()
        self._max_frame_bytes = max_frame_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the frames they completed, oldest first."""
        self._buffer += data
        frames: list[bytes] = []
        buffer = self._buffer
        while buffer:
            if buffer[0] != SOH:
                start = buffer.find(SOH)
                self._discard(len(buffer) if start < 0 else start)
                continue
            end = buffer.find(ETX, 1)
            restart = buffer.find(SOH, 1, len(buffer) if end < 0 else end)
            if restart >= 0:
                # A new frame began before this one ended: this one was cut short.
                self._discard(restart)
                continue
            if end < 0:
                if len(buffer) > self._max_frame_bytes:
                    self._discard(len(buffer))
                break
            if end + 1 > self._max_frame_bytes:
                self._discard(end + 1)
                continue
            frames.append(bytes(buffer[: end + 1]))
            del buffer[: end + 1]
            self._resynced()
        return frames

    def _garbage_in(self, dropped: bytes) -> int:
        # The CR LF after a frame's ETX is the protocol's, not garbage.
        return len(dropped) - dropped.count(b"\r") - dropped.count(b"\n")


def decode_message2(frame: bytes) -> PwdMessage2:
    """Decode a message 2 reply (with or without its CR LF trailer)."""
    sensor_id, lines = _unframe(frame)
    if any(line.strip() for line in lines[1:]):
        raise DecodeError("message 2 is one line; got more (is the sensor sending 7?)")
    tokens = lines[0].split() if lines else []
    if len(tokens) != _MESSAGE2_TOKENS:
        raise DecodeError(f"message 2 has {_MESSAGE2_TOKENS} fields, got {len(tokens)}")
    return PwdMessage2(sensor_id=sensor_id, **_common_fields(tokens))


def decode_message7(frame: bytes) -> PwdMessage7:
    """Decode a message 7 reply; see the module docstring for the layout assumed."""
    sensor_id, lines = _unframe(frame)
    if len(lines) > 3:
        raise DecodeError(f"message 7 has at most 3 lines, got {len(lines)}")
    tokens = lines[0].split() if lines else []
    if not _MESSAGE2_TOKENS <= len(tokens) <= _MESSAGE2_TOKENS + 2:
        raise DecodeError(f"message 7 has 10 to 12 fields on line 1, got {len(tokens)}")
    extra = [*tokens[_MESSAGE2_TOKENS:], None, None]
    return PwdMessage7(
        sensor_id=sensor_id,
        **_common_fields(tokens[:_MESSAGE2_TOKENS]),
        temperature_c=_number(extra[0], "temperature_c", _SIGNED_DECIMAL),
        luminance_cd_m2=_number(extra[1], "luminance_cd_m2", _DECIMAL),
        metar_present_weather=lines[1].strip() if len(lines) > 1 else None,
        metar_recent_weather=lines[2].strip() if len(lines) > 2 else None,
    )


def _unframe(frame: bytes) -> tuple[str, list[str]]:
    """Check the SOH/STX/ETX frame; return the sensor id and the body's lines."""
    data = bytes(frame)
    if data.endswith(b"\r\n"):
        data = data[:-2]
    if len(data) < 3 or data[0] != SOH or data[-1] != ETX:
        raise DecodeError("not a PWD reply frame (SOH ... ETX)")
    stx = data.find(STX)
    if stx < 0:
        raise DecodeError("PWD frame has no STX")
    header, body = data[1:stx], data[stx + 1 : -1]
    if not _PRINTABLE.fullmatch(header) or not _PRINTABLE.fullmatch(body):
        raise DecodeError("PWD frame holds bytes that are not printable ASCII")
    match = _HEADER.fullmatch(header.decode("ascii"))
    if match is None:
        raise DecodeError(f"unexpected PWD frame header {header!r}")
    return match[1], body.decode("ascii").splitlines()


def _common_fields(tokens: list[str]) -> dict[str, Any]:
    """The ten fields messages 2 and 7 share, by dataclass field name."""
    status = tokens[0]
    if len(status) != 2:
        raise DecodeError(f"status must be two digits, got {status!r}")
    return {
        "visibility_alarm": _status_digit(status[0], "visibility_alarm", _MAX_VISIBILITY_ALARM),
        "hardware_status": _status_digit(status[1], "hardware_status", _MAX_HARDWARE_STATUS),
        "visibility_1min_m": _integer(tokens[1], "visibility_1min_m", _UINT),
        "visibility_10min_m": _integer(tokens[2], "visibility_10min_m", _UINT),
        "nws_code": _nws_code(tokens[3]),
        "wmo_present_weather": _integer(tokens[4], "wmo_present_weather", _WMO_CODE),
        "wmo_15min": _integer(tokens[5], "wmo_15min", _WMO_CODE),
        "wmo_1h": _integer(tokens[6], "wmo_1h", _WMO_CODE),
        "precipitation_intensity_mm_h": _number(tokens[7], "precipitation_intensity_mm_h", _DECIMAL),
        "water_sum_mm": _number(tokens[8], "water_sum_mm", _DECIMAL),
        "snow_sum_mm": _number(tokens[9], "snow_sum_mm", _DECIMAL),
    }


def _is_missing(token: str | None) -> bool:
    return token is None or (bool(token) and token.strip("/") == "")


def _status_digit(char: str, name: str, highest: int) -> int | None:
    if char == "/":
        return None
    if not ("0" <= char <= "9") or int(char) > highest:
        raise DecodeError(f"{name} must be 0..{highest}, got {char!r}")
    return int(char)


def _integer(token: str, name: str, pattern: re.Pattern[str]) -> int | None:
    if _is_missing(token):
        return None
    if not pattern.fullmatch(token):
        raise DecodeError(f"{name}: not a valid value: {token!r}")
    return int(token)


def _number(token: str | None, name: str, pattern: re.Pattern[str]) -> float | None:
    if token is None or _is_missing(token):
        return None
    if not pattern.fullmatch(token):
        raise DecodeError(f"{name}: not a valid value: {token!r}")
    return float(token)


def _nws_code(token: str) -> str | None:
    if _is_missing(token):
        return None
    if not _NWS_CODE.fullmatch(token):
        raise DecodeError(f"nws_code: not a valid code: {token!r}")
    return token
