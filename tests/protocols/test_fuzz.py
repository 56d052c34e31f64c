"""Property-based tests: every decoder meets hostile bytes.

What must hold for random bytes and for mutated valid frames, fed whole or in random
chunks: only ``DecodeError`` escapes, stream buffers stay bounded, and a valid frame
sent after the garbage is still decoded. Round trips check the encoders too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.errors import DecodeError
from edgeagent.protocols import bthome, ruuvi, ti_mmwave, vaisala_pwd
from edgeagent.protocols.ti_mmwave import RadarPoint

pytestmark = pytest.mark.timeout(60)

FUZZ = settings(max_examples=200, deadline=None)
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
MAC = "54:48:E6:8F:80:A5"
PWD_MAX_FRAME_BYTES = 256
RADAR_MAX_PACKET_BYTES = 2048

garbage = st.binary(max_size=600)
chunk_sizes = st.lists(st.integers(min_value=1, max_value=80), min_size=1, max_size=12)


def _chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """Cut ``data`` into pieces of the given sizes, cycling through them."""
    pos, turn = 0, 0
    while pos < len(data):
        size = sizes[turn % len(sizes)]
        yield data[pos : pos + size]
        pos += size
        turn += 1


def _decodes_or_refuses(decoder: Callable[[bytes], Any], data: bytes) -> None:
    """Call a decoder; DecodeError is a fine answer, any other exception fails the test."""
    with contextlib.suppress(DecodeError):
        decoder(data)


@st.composite
def mutated(draw: st.DrawFn, frames: st.SearchStrategy[bytes]) -> bytes:
    """A valid frame with a few bytes flipped, dropped, inserted, or the tail cut."""
    data = bytearray(draw(frames))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        pos = draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(min_value=1, max_value=255))
        elif op == "delete" and data:
            del data[pos]
        elif op == "insert":
            data.insert(pos, draw(st.integers(min_value=0, max_value=255)))
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


# --- Vaisala PWD -----------------------------------------------------------------------


def _slashes_or(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), values)


def _token(value: Any, render: Callable[[Any], str], slashes: int) -> str:
    return "/" * slashes if value is None else render(value)


@st.composite
def pwd_message2(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """A message 2 frame and the values it must decode to."""
    expected: dict[str, Any] = {
        "visibility_alarm": draw(st.integers(0, 3)),
        "hardware_status": draw(st.integers(0, 4)),
        "visibility_1min_m": draw(_slashes_or(st.integers(0, 35000))),
        "visibility_10min_m": draw(_slashes_or(st.integers(0, 35000))),
        "nws_code": draw(_slashes_or(st.sampled_from(["C", "P", "L-", "R", "R+", "ZR", "S-", "IP"]))),
        "wmo_present_weather": draw(_slashes_or(st.integers(0, 99))),
        "wmo_15min": draw(_slashes_or(st.integers(0, 99))),
        "wmo_1h": draw(_slashes_or(st.integers(0, 99))),
        "precipitation_intensity_mm_h": draw(_slashes_or(st.integers(0, 99999).map(lambda n: n / 100))),
        "water_sum_mm": draw(_slashes_or(st.integers(0, 9999).map(lambda n: n / 100))),
        "snow_sum_mm": draw(_slashes_or(st.integers(0, 999).map(float))),
    }
    slashes = draw(st.integers(1, 6))
    tokens = [f"{expected['visibility_alarm']}{expected['hardware_status']}"]
    tokens += [_token(expected[name], str, slashes) for name in list(expected)[2:8]]
    tokens += [_token(expected[name], lambda v: f"{v:.2f}", slashes) for name in list(expected)[8:]]
    separator = draw(st.sampled_from([" ", "  "]))
    sensor_id = draw(st.sampled_from(["1", "2", "A", "12"]))
    return vaisala_pwd.encode_frame(sensor_id, separator.join(tokens)), expected | {"sensor_id": sensor_id}


pwd_frames = pwd_message2().map(lambda pair: pair[0])
# Well framed, with bodies made of the characters real bodies use, in any order.
pwd_scrambled = st.text(alphabet=" 0123456789/.-+CLPRSZ\r\n", max_size=120).map(
    lambda body: vaisala_pwd.encode_frame("1", body)
)


@FUZZ
@given(pwd_message2())
def test_pwd_message2_round_trip(case: tuple[bytes, dict[str, Any]]) -> None:
    frame, expected = case
    message = vaisala_pwd.decode_message2(frame)
    for name, value in expected.items():
        assert getattr(message, name) == value, name
    assert message.missing == {name for name, value in expected.items() if value is None}


@FUZZ
@given(st.one_of(garbage, mutated(pwd_frames), pwd_scrambled))
def test_pwd_decoders_raise_only_decode_error(data: bytes) -> None:
    _decodes_or_refuses(vaisala_pwd.decode_message2, data)
    _decodes_or_refuses(vaisala_pwd.decode_message7, data)
    _decodes_or_refuses(vaisala_pwd.decode_poll, data)


@FUZZ
@given(st.one_of(garbage, mutated(pwd_frames)), pwd_frames, chunk_sizes)
def test_pwd_framer_stays_bounded_and_recovers(noise: bytes, valid: bytes, sizes: list[int]) -> None:
    framer = vaisala_pwd.PwdFramer(max_frame_bytes=PWD_MAX_FRAME_BYTES)
    frames: list[bytes] = []
    for chunk in _chunks(noise + valid, sizes):
        frames += framer.feed(chunk)
        assert framer.buffered_bytes <= PWD_MAX_FRAME_BYTES
    for frame in frames:
        _decodes_or_refuses(vaisala_pwd.decode_message2, frame)
    assert frames[-1] == valid.removesuffix(b"\r\n")
    assert vaisala_pwd.decode_message2(frames[-1]) == vaisala_pwd.decode_message2(valid)


# --- TI mmWave -------------------------------------------------------------------------

_coordinate = st.floats(min_value=-200, max_value=200, allow_nan=False, width=32)
_decibels = st.integers(min_value=-3000, max_value=3000).map(lambda n: n / 10)


@st.composite
def radar_points(draw: st.DrawFn) -> list[RadarPoint]:
    count = draw(st.integers(min_value=0, max_value=12))
    side_info = draw(st.booleans())
    return [
        RadarPoint(
            x_m=draw(_coordinate),
            y_m=draw(_coordinate),
            z_m=draw(_coordinate),
            velocity_m_s=draw(_coordinate),
            snr_db=draw(_decibels) if side_info else None,
            noise_db=draw(_decibels) if side_info else None,
        )
        for _ in range(count)
    ]


radar_frames = st.builds(
    ti_mmwave.encode_frame,
    st.integers(min_value=0, max_value=0xFFFFFFFF),
    radar_points(),
    time_cpu_cycles=st.integers(min_value=0, max_value=0xFFFFFFFF),
)


@FUZZ
@given(st.integers(min_value=0, max_value=0xFFFFFFFF), radar_points())
def test_radar_round_trip_and_summary(frame_number: int, points: list[RadarPoint]) -> None:
    frame = ti_mmwave.decode_packet(ti_mmwave.encode_frame(frame_number, points))
    assert frame.frame_number == frame_number
    assert frame.points == tuple(points)
    assert frame.target_count == len(points)
    if points:
        assert frame.nearest_range_m == min(p.range_m for p in points)
    else:
        assert frame.nearest_range_m is None
    approaching = [-p.velocity_m_s for p in points if p.velocity_m_s < 0]
    assert frame.approach_speed_m_s == (max(approaching) if approaching else None)


@FUZZ
@given(
    st.one_of(
        garbage,
        garbage.map(lambda data: ti_mmwave.MAGIC + data),  # random header and TLVs
        mutated(radar_frames),
    )
)
def test_radar_decode_packet_raises_only_decode_error(data: bytes) -> None:
    _decodes_or_refuses(ti_mmwave.decode_packet, data)


@FUZZ
@given(
    st.lists(st.one_of(garbage, mutated(radar_frames), radar_frames), max_size=4).map(b"".join),
    radar_frames,
    chunk_sizes,
)
def test_radar_stream_stays_bounded_and_recovers(noise: bytes, valid: bytes, sizes: list[int]) -> None:
    decoder = ti_mmwave.RadarStreamDecoder(max_packet_bytes=RADAR_MAX_PACKET_BYTES)
    frames: list[ti_mmwave.RadarFrame] = []
    errors_seen = 0
    for chunk in _chunks(noise + valid, sizes):
        frames += decoder.feed(chunk)
        assert decoder.buffered_bytes <= RADAR_MAX_PACKET_BYTES
        assert decoder.framing_errors >= errors_seen
        errors_seen = decoder.framing_errors
    frames += decoder.flush()  # the line goes quiet after the valid frame
    assert frames[-1] == ti_mmwave.decode_packet(valid)
    assert decoder.buffered_bytes == 0


@FUZZ
@given(st.lists(radar_frames, min_size=1, max_size=3).map(b"".join), chunk_sizes)
def test_radar_stream_chunking_does_not_change_the_result(stream: bytes, sizes: list[int]) -> None:
    whole = ti_mmwave.RadarStreamDecoder()
    expected = whole.feed(stream)
    chunked = ti_mmwave.RadarStreamDecoder()
    frames = [frame for chunk in _chunks(stream, sizes) for frame in chunked.feed(chunk)]
    assert frames == expected
    assert (chunked.framing_errors, chunked.skipped_bytes) == (0, 0)


# --- BTHome ----------------------------------------------------------------------------

bthome_objects = st.lists(
    st.one_of(
        st.tuples(st.just(0x01), st.integers(0, 100)),
        st.tuples(st.just(0x02), st.integers(-32768, 32767).map(lambda n: n / 100)),
        st.tuples(st.just(0x03), st.integers(0, 10000).map(lambda n: n / 100)),
        st.tuples(st.just(0x0C), st.integers(0, 65535).map(lambda n: n / 1000)),
        st.tuples(st.just(0x20), st.booleans()),
        st.tuples(st.just(0x40), st.integers(0, 65535)),
        st.tuples(st.just(0x41), st.integers(0, 65535).map(lambda n: n / 10)),
        st.tuples(st.just(0x53), st.text(max_size=8)),
    ),
    max_size=6,
)
bthome_plain = st.builds(bthome.encode, bthome_objects, packet_id=st.integers(0, 255))
bthome_encrypted = st.builds(
    bthome.encode_encrypted,
    bthome_objects,
    mac=st.just(MAC),
    key=st.just(KEY),
    counter=st.integers(0, 0xFFFFFFFF),
)


@FUZZ
@given(bthome_objects, st.integers(0, 0xFFFFFFFF), st.booleans())
def test_bthome_encrypted_round_trip(objects: list[tuple[int, Any]], counter: int, trigger: bool) -> None:
    data = bthome.encode_encrypted(objects, mac=MAC, key=KEY, counter=counter, trigger_based=trigger)
    packet = bthome.BTHomeDecryptor(mac=MAC, key=KEY).decode(data)
    assert [(m.object_id, m.value) for m in packet.measurements] == objects
    assert (packet.counter, packet.trigger_based, packet.complete) == (counter, trigger, True)


@FUZZ
@given(
    st.one_of(
        garbage,
        garbage.map(lambda data: b"\x40" + data),  # v2, plain: random objects
        garbage.map(lambda data: b"\x43" + data),  # v2, encrypted, MAC included
        mutated(bthome_plain),
        mutated(bthome_encrypted),
    )
)
def test_bthome_decoders_raise_only_decode_error(data: bytes) -> None:
    _decodes_or_refuses(bthome.decode, data)
    _decodes_or_refuses(lambda d: bthome.decode(d, mac=MAC, key=KEY), data)
    _decodes_or_refuses(bthome.BTHomeDecryptor(mac=MAC, key=KEY, last_counter=5).decode, data)


@FUZZ
@given(st.lists(st.one_of(garbage, mutated(bthome_encrypted)), max_size=5), bthome_objects)
def test_bthome_decryptor_recovers_after_garbage(noise: list[bytes], objects: list[tuple[int, Any]]) -> None:
    decryptor = bthome.BTHomeDecryptor(mac=MAC, key=KEY)
    for data in noise:
        _decodes_or_refuses(decryptor.decode, data)
    counter = (decryptor.last_counter or 0) + 1
    if counter > 0xFFFFFFFF:
        return  # a forged packet cannot get here: it would need the key
    packet = decryptor.decode(bthome.encode_encrypted(objects, mac=MAC, key=KEY, counter=counter))
    assert packet.counter == counter


# --- Ruuvi -----------------------------------------------------------------------------

ruuvi_payloads = st.binary(min_size=23, max_size=23).map(lambda rest: b"\x05" + rest)


@FUZZ
@given(ruuvi_payloads)
def test_ruuvi_any_format5_payload_decodes_and_re_encodes(data: bytes) -> None:
    assert ruuvi.encode(ruuvi.decode(data)) == data


@FUZZ
@given(st.one_of(garbage, mutated(ruuvi_payloads)))
def test_ruuvi_decoder_raises_only_decode_error(data: bytes) -> None:
    _decodes_or_refuses(ruuvi.decode, data)
