"""TI mmWave SDK 3.x UART TLV frames: literal bytes, stream reassembly and resync."""

from __future__ import annotations

import math
import struct

import pytest

from edgeagent.errors import DecodeError
from edgeagent.protocols.ti_mmwave import (
    MAGIC,
    RadarFrame,
    RadarPoint,
    RadarStreamDecoder,
    decode_packet,
    encode_frame,
)

# Frame 42, one point at x=0, y=4, z=1 m moving at -2.5 m/s, SNR 12.3 dB, noise 4.5 dB.
FRAME_42 = bytes.fromhex(
    "0201040306050807"  # magic
    "04000503"  # version 3.5.0.4
    "60000000"  # totalPacketLen 96
    "43680a00"  # platform 0xA6843
    "2a000000"  # frameNumber 42
    "e8030000"  # timeCpuCycles 1000
    "01000000"  # numDetectedObj 1
    "02000000"  # numTLVs 2
    "00000000"  # subFrameNumber 0
    "01000000"
    "10000000"  # TLV type 1, 16 bytes
    "00000000"
    "00008040"
    "0000803f"
    "000020c0"  # x 0.0, y 4.0, z 1.0, v -2.5
    "07000000"
    "04000000"  # TLV type 7, 4 bytes
    "7b00"
    "2d00" + "00" * 20  # snr 123, noise 45 (0.1 dB)  # padding to 96
)
POINT_42 = RadarPoint(x_m=0.0, y_m=4.0, z_m=1.0, velocity_m_s=-2.5, snr_db=12.3, noise_db=4.5)


def _frame(frame_number: int, *points: RadarPoint) -> bytes:
    return encode_frame(frame_number, points)


def _point(x: float, y: float, z: float, v: float) -> RadarPoint:
    return RadarPoint(x_m=x, y_m=y, z_m=z, velocity_m_s=v)


def _feed_all(decoder: RadarStreamDecoder, chunks: list[bytes]) -> list[RadarFrame]:
    frames: list[RadarFrame] = []
    for chunk in chunks:
        frames += decoder.feed(chunk)
    return frames


def test_literal_frame_decodes() -> None:
    frame = decode_packet(FRAME_42)
    assert frame.frame_number == 42
    assert frame.version == 0x03050004
    assert frame.platform == 0xA6843
    assert frame.time_cpu_cycles == 1000
    assert frame.sub_frame_number == 0
    assert frame.points == (POINT_42,)
    assert frame.target_count == 1
    assert frame.nearest_range_m == pytest.approx(math.sqrt(17))
    assert frame.approach_speed_m_s == 2.5


def test_encode_frame_reproduces_the_literal_frame() -> None:
    assert encode_frame(42, [POINT_42], time_cpu_cycles=1000) == FRAME_42


@pytest.mark.parametrize("count", [0, 1, 2, 3, 7, 40])
def test_encode_frame_pads_to_32_bytes(count: int) -> None:
    points = [_point(float(i), 1.0, 0.0, 0.5) for i in range(count)]
    packet = encode_frame(1, points)
    assert len(packet) % 32 == 0
    assert struct.unpack_from("<I", packet, 12)[0] == len(packet)
    assert decode_packet(packet).points == tuple(points)


def test_summary_nearest_range_and_fastest_approach() -> None:
    frame = decode_packet(
        _frame(
            5,
            _point(3.0, 4.0, 0.0, -1.0),  # 5 m, approaching at 1 m/s
            _point(0.0, 2.0, 0.0, 4.0),  # 2 m, receding
            _point(0.0, 8.0, 6.0, -6.5),  # 10 m, approaching at 6.5 m/s
        )
    )
    assert frame.target_count == 3
    assert frame.nearest_range_m == 2.0
    assert frame.approach_speed_m_s == 6.5


def test_summary_without_points_or_without_approaching_points() -> None:
    empty = decode_packet(_frame(1))
    assert (empty.points, empty.target_count) == ((), 0)
    assert empty.nearest_range_m is None
    assert empty.approach_speed_m_s is None
    receding = decode_packet(_frame(2, _point(0.0, 1.0, 0.0, 0.0), _point(0.0, 2.0, 0.0, 1.0)))
    assert receding.approach_speed_m_s is None
    assert receding.nearest_range_m == 1.0


def test_points_without_side_info_have_no_snr() -> None:
    frame = decode_packet(_frame(3, _point(1.0, 1.0, 0.0, 0.0)))
    assert frame.points[0].snr_db is None
    assert frame.points[0].noise_db is None


def test_unknown_tlv_types_are_skipped() -> None:
    packet = encode_frame(9, [POINT_42], extra_tlvs=[(2, b"\x01\x02" * 64), (6, b"\x00" * 24)])
    assert decode_packet(packet).points == (POINT_42,)


def _with_header_field(packet: bytes, index: int, value: int) -> bytes:
    """Replace one of the eight header words (0 = version ... 7 = subFrameNumber)."""
    offset = 8 + 4 * index
    return packet[:offset] + struct.pack("<I", value) + packet[offset + 4 :]


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        FRAME_42[:39],
        b"\x00" + FRAME_42[1:],  # magic
        FRAME_42[:-32],  # shorter than totalPacketLen
        _with_header_field(FRAME_42, 5, 2),  # numDetectedObj disagrees with the TLV
        _with_header_field(FRAME_42, 6, 5),  # TLV headers run into the end of the packet
        _with_header_field(FRAME_42, 6, 200),
        _with_header_field(FRAME_42, 1, 128) + bytes(32),  # more than padding
        FRAME_42[:44] + struct.pack("<I", 0xFFFFFFF0) + FRAME_42[48:],  # TLV length
        FRAME_42[:60] + struct.pack("<f", math.nan) + FRAME_42[64:],  # v
        FRAME_42[:48] + struct.pack("<f", math.inf) + FRAME_42[52:],  # x
        FRAME_42[:68] + struct.pack("<I", 6) + FRAME_42[72:],  # side info for 1.5 points
        encode_frame(1, [POINT_42], extra_tlvs=[(1, bytes(16))]),  # two point lists
        encode_frame(1, [POINT_42], extra_tlvs=[(7, bytes(4))]),  # two side infos
    ],
)
def test_corrupt_packets_raise_decode_error(packet: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_packet(packet)


def test_encode_frame_refuses_partial_side_info() -> None:
    with pytest.raises(ValueError):
        encode_frame(1, [POINT_42, _point(1.0, 1.0, 1.0, 1.0)])
    with pytest.raises(ValueError):
        encode_frame(-1)


def test_split_at_every_byte_boundary_decodes_identically() -> None:
    stream = FRAME_42 + _frame(43, _point(1.0, 2.0, 3.0, -0.25))
    expected = RadarStreamDecoder().feed(stream)
    assert [f.frame_number for f in expected] == [42, 43]
    for cut in range(len(stream) + 1):
        decoder = RadarStreamDecoder()
        assert _feed_all(decoder, [stream[:cut], stream[cut:]]) == expected, cut
        assert (decoder.framing_errors, decoder.skipped_bytes, decoder.buffered_bytes) == (0, 0, 0)


def test_byte_by_byte_feed_decodes_identically() -> None:
    stream = FRAME_42 * 3
    decoder = RadarStreamDecoder()
    frames = _feed_all(decoder, [bytes([b]) for b in stream])
    assert frames == [decode_packet(FRAME_42)] * 3
    assert decoder.frames == 3


def test_garbage_before_and_between_frames_is_skipped_and_counted() -> None:
    garbage_1 = b"\xde\xad\xbe\xef" * 5
    garbage_2 = b"\x02\x01\x04\x03" + b"junk"  # a partial magic word, then junk
    stream = garbage_1 + FRAME_42 + garbage_2 + FRAME_42
    for chunk in (1, 7, 33, len(stream)):
        decoder = RadarStreamDecoder()
        frames = _feed_all(decoder, [stream[i : i + chunk] for i in range(0, len(stream), chunk)])
        assert [f.frame_number for f in frames] == [42, 42]
        assert decoder.framing_errors == 2
        assert decoder.skipped_bytes == len(garbage_1) + len(garbage_2)


def test_truncated_frame_followed_by_good_frame_yields_the_good_frame() -> None:
    good = _frame(7, _point(0.0, 5.0, 0.0, -1.0))
    for cut in (1, 8, 20, 40, 50, len(FRAME_42) - 1):
        decoder = RadarStreamDecoder()
        frames = decoder.feed(FRAME_42[:cut]) + decoder.feed(good)
        assert [f.frame_number for f in frames] == [7], cut
        assert decoder.framing_errors == 1
        assert decoder.buffered_bytes == 0


def test_header_cut_short_by_the_next_frame_does_not_swallow_it() -> None:
    # Magic and 28 header bytes claiming a 41-byte packet, then a real frame: the
    # claimed packet would end 5 bytes into the real frame's magic word.
    cut = MAGIC + struct.pack("<7I", 0, 41, 0, 0, 0, 0, 0)
    decoder = RadarStreamDecoder()
    frames = _feed_all(decoder, [bytes([b]) for b in cut + FRAME_42])
    assert frames == [decode_packet(FRAME_42)]
    assert decoder.framing_errors == 1


def test_a_frame_ending_like_a_magic_word_waits_for_one_more_byte() -> None:
    # 64 bytes, no padding, and its last byte is 0x02, the first byte of a magic word.
    frame = encode_frame(3, extra_tlvs=[(9, bytes(15) + b"\x02")])
    assert len(frame) == 64
    assert frame.endswith(b"\x02")
    decoder = RadarStreamDecoder()
    assert decoder.feed(frame) == []
    assert decoder.feed(b"\x00") == [decode_packet(frame)]
    decoder = RadarStreamDecoder()
    assert decoder.feed(frame) == []
    assert decoder.flush() == [decode_packet(frame)]  # the line went quiet
    assert decoder.flush() == []
    decoder = RadarStreamDecoder()
    assert decoder.feed(frame + FRAME_42) == [decode_packet(frame), decode_packet(FRAME_42)]
    assert decoder.framing_errors == 0


def test_corrupt_length_slides_to_the_next_magic_word() -> None:
    inflated = _with_header_field(FRAME_42, 1, 60_000)
    deflated = _with_header_field(FRAME_42, 1, 8)
    for bad in (inflated, deflated):
        decoder = RadarStreamDecoder()
        frames = decoder.feed(bad + _frame(8))
        assert [f.frame_number for f in frames] == [8]
        assert decoder.framing_errors == 1


def test_a_frame_that_fails_to_decode_is_skipped() -> None:
    bad = _with_header_field(FRAME_42, 5, 9)
    decoder = RadarStreamDecoder()
    frames = decoder.feed(bad + FRAME_42)
    assert [f.frame_number for f in frames] == [42]
    assert decoder.framing_errors == 1
    assert decoder.skipped_bytes == len(bad)


def test_buffer_is_bounded_by_max_packet_bytes() -> None:
    decoder = RadarStreamDecoder(max_packet_bytes=256)
    huge = _with_header_field(FRAME_42, 1, 1024)
    decoder.feed(huge[:40])
    assert decoder.buffered_bytes < 40  # the length was refused at once
    for _ in range(100):
        decoder.feed(b"\x00" * 100)
        assert decoder.buffered_bytes <= 256
    decoder.feed(FRAME_42[:60])
    assert decoder.buffered_bytes <= 256
    assert decoder.feed(FRAME_42[60:] + FRAME_42) == [decode_packet(FRAME_42)] * 2


def test_waiting_for_a_long_frame_stays_bounded() -> None:
    decoder = RadarStreamDecoder(max_packet_bytes=128)
    big = _frame(1, *[_point(1.0, 1.0, 1.0, 1.0)] * 20)  # 384 bytes, over the limit
    assert decoder.feed(big) == []
    assert decoder.buffered_bytes <= 128
    assert decoder.feed(FRAME_42) == [decode_packet(FRAME_42)]


def test_reset_drops_a_partial_packet() -> None:
    decoder = RadarStreamDecoder()
    decoder.feed(FRAME_42[:50])
    decoder.reset()
    assert decoder.buffered_bytes == 0
    assert decoder.feed(FRAME_42) == [decode_packet(FRAME_42)]


def test_magic_word_constant() -> None:
    assert bytes([2, 1, 4, 3, 6, 5, 8, 7]) == MAGIC
