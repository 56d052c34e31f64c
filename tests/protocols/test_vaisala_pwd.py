"""Vaisala PWD22/52 poll, framing and message 2/7 decoding, from literal bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeagent.errors import DecodeError
from edgeagent.protocols.vaisala_pwd import (
    PwdFramer,
    PwdMessage2,
    PwdPoll,
    decode_message2,
    decode_message7,
    decode_poll,
    encode_frame,
    encode_poll,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "vaisala_pwd.json").read_text())

MESSAGE2 = b"\x01PW  1\x0200 1839 1505 R- 61 61 61 0.33 12.16 0\x03\r\n"
# The manual's message 7 example, with its frame: three CR LF terminated lines.
MESSAGE7 = b"\x01PW  1\x0200  6839  7505  R  61 61 61   0.33  12.16    0  23.4 12345\r\n-RA\r\nRERA\r\n\x03\r\n"


def test_poll_command_is_cr_enq_pw_id_message_cr() -> None:
    assert encode_poll("1", 2) == b"\r\x05PW 1 2\r"
    assert encode_poll("1", 2) == VECTORS["poll_message_2_unit_1"].encode("ascii")
    assert encode_poll("A1", 7) == b"\r\x05PW A1 7\r"


@pytest.mark.parametrize(("sensor_id", "message"), [("", 2), ("ABC", 2), ("1 ", 2), ("1", 100)])
def test_poll_rejects_what_the_sensor_would_not_understand(sensor_id: str, message: int) -> None:
    with pytest.raises(ValueError):
        encode_poll(sensor_id, message)


def test_poll_decodes_for_simulators_and_accepts_fd() -> None:
    assert decode_poll(b"\r\x05PW 1 2\r") == PwdPoll(sensor_id="1", message=2)
    assert decode_poll(b"\r\x05FD 12 7\r") == PwdPoll(sensor_id="12", message=7)
    with pytest.raises(DecodeError):
        decode_poll(b"\r\x05XX 1 2\r")


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda case: case["frame"][7:17])
def test_message2_vectors(case: dict[str, Any]) -> None:
    message = decode_message2(case["frame"].encode("ascii"))
    for name, expected in case["expect"].items():
        if name == "note":
            continue
        assert getattr(message, name) == expected, name
        assert (name in message.missing) == (expected is None), name


def test_message2_literal_values_and_types() -> None:
    message = decode_message2(MESSAGE2)
    assert message == PwdMessage2(
        sensor_id="1",
        visibility_alarm=0,
        hardware_status=0,
        visibility_1min_m=1839,
        visibility_10min_m=1505,
        nws_code="R-",
        wmo_present_weather=61,
        wmo_15min=61,
        wmo_1h=61,
        precipitation_intensity_mm_h=0.33,
        water_sum_mm=12.16,
        snow_sum_mm=0.0,
    )
    assert message.missing == frozenset()
    assert isinstance(message.visibility_1min_m, int)


def test_slashes_become_none_never_zero() -> None:
    frame = b"\x01PW  1\x0220 ///// ///// // // // // ////// ////// ////\x03\r\n"
    message = decode_message2(frame)
    assert message.visibility_alarm == 2
    assert message.hardware_status == 0
    values = {
        "visibility_1min_m",
        "visibility_10min_m",
        "nws_code",
        "wmo_present_weather",
        "wmo_15min",
        "wmo_1h",
        "precipitation_intensity_mm_h",
        "water_sum_mm",
        "snow_sum_mm",
    }
    assert message.missing == values
    assert all(getattr(message, name) is None for name in values)


def test_status_digits_and_single_missing_field() -> None:
    frame = b"\x01PW  1\x0232 1839 ///// C 0 0 0 0.00 0.00 0\x03\r\n"
    message = decode_message2(frame)
    assert (message.visibility_alarm, message.hardware_status) == (3, 2)
    assert message.missing == {"visibility_10min_m"}
    assert message.precipitation_intensity_mm_h == 0.0  # a real zero stays a zero


def test_frame_without_trailer_and_two_character_id() -> None:
    assert decode_message2(MESSAGE2[:-2]) == decode_message2(MESSAGE2)
    assert decode_message2(encode_frame("A1", "00 1839 1505 R- 61 61 61 0.33 12.16 0")).sensor_id == ("A1")


def test_encode_frame_matches_the_sensor() -> None:
    assert encode_frame("1", "00 1839 1505 R- 61 61 61 0.33 12.16 0") == MESSAGE2
    with pytest.raises(ValueError):
        encode_frame("1", "bad\x03body")


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x01PW  1\x02\x03\r\n",
        b"PW  1\x0200 1839 1505 R- 61 61 61 0.33 12.16 0\x03\r\n",  # no SOH
        b"\x01PW  100 1839 1505 R- 61 61 61 0.33 12.16 0\x03\r\n",  # no STX
        b"\x01PW  1\x0200 1839 1505 R- 61 61 61 0.33 12.16 0\r\n",  # no ETX
        b"\x01XX  1\x0200 1839 1505 R- 61 61 61 0.33 12.16 0\x03\r\n",  # not a PWD
        b"\x01PW  1\x0200 1839 1505 R- 61 61 61 0.33 12.16\x03\r\n",  # 9 fields
        b"\x01PW  1\x0200 1839 1505 R- 61 61 61 0.33 12.16 0 7\x03\r\n",  # 11 fields
        b"\x01PW  1\x0250 1839 1505 R- 61 61 61 0.33 12.16 0\x03\r\n",  # alarm 5
        b"\x01PW  1\x0205 1839 1505 R- 61 61 61 0.33 12.16 0\x03\r\n",  # hardware 5
        b"\x01PW  1\x020 1839 1505 R- 61 61 61 0.33 12.16 0\x03\r\n",  # status 1 digit
        b"\x01PW  1\x0200 18// 1505 R- 61 61 61 0.33 12.16 0\x03\r\n",  # half missing
        b"\x01PW  1\x0200 -1839 1505 R- 61 61 61 0.33 12.16 0\x03\r\n",  # negative
        b"\x01PW  1\x0200 1839 1505 r- 61 61 61 0.33 12.16 0\x03\r\n",  # bad NWS code
        b"\x01PW  1\x0200 1839 1505 R- 611 61 61 0.33 12.16 0\x03\r\n",  # WMO > 99
        b"\x01PW  1\x0200 1839 1505 R- 61 61 61 nan 12.16 0\x03\r\n",
        b"\x01PW  1\x0200 1839 1505 R- 61 61 61 1e3 12.16 0\x03\r\n",
        b"\x01PW  1\x0200 1839 1505 R- 61 61 61 0.33 12.16 0\xb0\x03\r\n",  # 8-bit byte
        b"\x01PW  1\x0200 1839 1505 R- 61 61 61 0.33 12.16 0\x07\x03\r\n",  # control
        MESSAGE7,
    ],
)
def test_message2_rejects_malformed_frames(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message2(frame)


def test_message7_manual_example() -> None:
    message = decode_message7(MESSAGE7)
    assert message.visibility_1min_m == 6839
    assert message.visibility_10min_m == 7505
    assert message.nws_code == "R"
    assert message.temperature_c == 23.4
    assert message.luminance_cd_m2 == 12345.0
    assert message.metar_present_weather == "-RA"
    assert message.metar_recent_weather == "RERA"
    assert message.missing == frozenset()
    assert isinstance(message, PwdMessage2)  # usable wherever message 2 is


def test_message7_without_luminance_meter_and_without_metar_codes() -> None:
    frame = b"\x01FD  1\x0200  6839  7505  C  0 0 0   0.00  12.16    0  -3.5 /////\r\n\r\n\r\n\x03\r\n"
    message = decode_message7(frame)
    assert message.temperature_c == -3.5
    assert message.luminance_cd_m2 is None
    assert message.metar_present_weather == ""  # line sent, no codes to report
    assert message.metar_recent_weather == ""
    assert message.missing == {"luminance_cd_m2"}


def test_message7_tolerates_a_short_first_line_and_no_metar_lines() -> None:
    frame = b"\x01PW  1\x0200 6839 7505 C 0 0 0 0.00 12.16 0 +21\r\n\x03\r\n"
    message = decode_message7(frame)
    assert message.temperature_c == 21.0
    assert message.missing == {"luminance_cd_m2", "metar_present_weather", "metar_recent_weather"}


@pytest.mark.parametrize(
    "frame",
    [
        b"\x01PW  1\x0200 6839 7505 C 0 0 0 0.00 12.16 0 21 1 9\r\n\x03\r\n",  # 13 fields
        b"\x01PW  1\x0200 6839 7505 C 0 0 0 0.00 12.16\r\n\x03\r\n",  # 9 fields
        b"\x01PW  1\x0200 6839 7505 C 0 0 0 0.00 12.16 0 x 1\r\n\x03\r\n",  # bad temperature
        b"\x01PW  1\x0200 6839 7505 C 0 0 0 0.00 12.16 0 1 1\r\na\r\nb\r\nc\r\n\x03\r\n",
    ],
)
def test_message7_rejects_malformed_frames(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message7(frame)


def test_framer_reassembles_byte_by_byte() -> None:
    framer = PwdFramer()
    frames: list[bytes] = []
    for byte in MESSAGE2 + MESSAGE7:
        frames += framer.feed(bytes([byte]))
    assert frames == [MESSAGE2[:-2], MESSAGE7[:-2]]
    assert (framer.frames, framer.framing_errors, framer.skipped_bytes) == (2, 0, 0)
    assert framer.buffered_bytes == 0
    assert decode_message7(frames[1]).metar_recent_weather == "RERA"


def test_framer_skips_and_counts_garbage_between_frames() -> None:
    framer = PwdFramer()
    stream = b"\xff\x00noise" + MESSAGE2 + b"\r\n\r\n" + b"echo\x03" + MESSAGE2
    assert framer.feed(stream) == [MESSAGE2[:-2]] * 2
    assert framer.skipped_bytes == len(b"\xff\x00noise") + len(b"echo\x03")
    assert framer.framing_errors == 2  # two separate stretches of garbage


def test_framer_truncated_frame_followed_by_good_frame() -> None:
    framer = PwdFramer()
    truncated = MESSAGE2[:20]
    assert framer.feed(truncated) == []
    assert framer.feed(MESSAGE2) == [MESSAGE2[:-2]]
    assert framer.framing_errors == 1
    assert framer.skipped_bytes == len(truncated)


def test_framer_drops_overlong_frames_and_stays_bounded() -> None:
    framer = PwdFramer(max_frame_bytes=64)
    assert framer.feed(b"\x01PW  1\x02" + b"9" * 200) == []
    assert framer.buffered_bytes <= 64
    assert framer.feed(b"9" * 200 + b"\x03\r\n") == []
    assert framer.buffered_bytes == 0
    assert framer.feed(MESSAGE2) == [MESSAGE2[:-2]]
    assert framer.framing_errors == 1


def test_framer_reset_drops_a_stale_partial_reply() -> None:
    framer = PwdFramer()
    framer.feed(MESSAGE2[:10])
    framer.reset()
    assert framer.buffered_bytes == 0
    assert framer.feed(MESSAGE2[10:]) == []
    assert framer.feed(MESSAGE2) == [MESSAGE2[:-2]]
