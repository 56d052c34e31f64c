"""TI mmWave radar UART output (mmWave SDK 3.x out-of-box demo), TLV frames.

Spec facts used (mmWave SDK 3.x out-of-box demo, UART data port output format):

- A packet starts with the magic word ``02 01 04 03 06 05 08 07``, followed by eight
  little-endian uint32: version, totalPacketLen, platform, frameNumber,
  timeCpuCycles, numDetectedObj, numTLVs, subFrameNumber (a 40-byte header with the
  magic). totalPacketLen counts the whole packet, header and padding included.
- numTLVs TLVs follow, each ``type, length`` (uint32 LE) where length counts the
  payload only. Type 1 (detected points): per point float32 x, y, z (m) and v
  (radial velocity, m/s; negative while the range shrinks, i.e. approaching).
  Type 7 (side info): per point int16 snr and int16 noise, in units of 0.1 dB, in
  the same order as type 1.
- The packet is padded to a multiple of 32 bytes.

Checks that follow from these facts and reject corrupt packets: the TLV chain must
fit in totalPacketLen and leave fewer than 32 bytes of padding; a type 1 TLV holds
exactly numDetectedObj points and a type 7 TLV one entry per point; coordinates are
finite. Other TLV types (range profile, heat maps, statistics) are skipped.

The stream decoder treats a magic word found inside a packet it is still collecting
as proof that the packet was cut short, and restarts there. A valid packet whose
payload happened to contain the eight magic bytes would be lost; that trade keeps one
dropped byte from costing the next packet too.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from edgeagent.errors import DecodeError
from edgeagent.protocols._stream import StreamBuffer

MAGIC = b"\x02\x01\x04\x03\x06\x05\x08\x07"
HEADER_BYTES = 40
PADDING_BYTES = 32
TLV_DETECTED_POINTS = 1
TLV_SIDE_INFO = 7
DEFAULT_VERSION = 0x03050004
"""SDK 3.5.0.4: the version word is major, minor, bugfix, build, one byte each."""
DEFAULT_PLATFORM = 0x000A6843
"""IWR6843; the field is informational and not checked."""
DEFAULT_MAX_PACKET_BYTES = 64 * 1024
"""Room for the demo's largest heat maps; bounds what a corrupt length can hold."""

_HEADER = struct.Struct("<8s8I")
_TLV_HEADER = struct.Struct("<2I")
_POINT = struct.Struct("<4f")
_SIDE_INFO = struct.Struct("<2h")
_UINT32_MAX = 0xFFFFFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class RadarPoint:
    """One detected point; SNR and noise are ``None`` when the frame had no side info."""

    x_m: float
    y_m: float
    z_m: float
    velocity_m_s: float
    snr_db: float | None = None
    noise_db: float | None = None

    @property
    def range_m(self) -> float:
        """Euclidean distance from the radar."""
        return math.hypot(self.x_m, self.y_m, self.z_m)


@dataclass(frozen=True, slots=True, kw_only=True)
class RadarFrame:
    """One radar frame with a per-frame summary for edge rules.

    ``target_count`` is numDetectedObj from the header (detections, not tracks); it
    stays right when the demo is configured not to send the point list.
    ``approach_speed_m_s`` is the fastest approaching radial speed as a positive
    number, ``None`` when nothing approaches.
    """

    version: int
    platform: int
    frame_number: int
    sub_frame_number: int
    time_cpu_cycles: int
    target_count: int
    points: tuple[RadarPoint, ...]
    nearest_range_m: float | None = field(init=False)
    approach_speed_m_s: float | None = field(init=False)

    def __post_init__(self) -> None:
        # Derived from the points so the summary can never disagree with them.
        nearest = min((p.range_m for p in self.points), default=None)
        slowest_v = min((p.velocity_m_s for p in self.points), default=0.0)
        object.__setattr__(self, "nearest_range_m", nearest)
        object.__setattr__(self, "approach_speed_m_s", -slowest_v if slowest_v < 0 else None)


def decode_packet(packet: bytes) -> RadarFrame:
    """Decode one complete packet, magic word to the end of its padding."""
    data = bytes(packet)
    if len(data) < HEADER_BYTES:
        raise DecodeError(f"radar packet shorter than its {HEADER_BYTES}-byte header")
    (
        magic,
        version,
        total_len,
        platform,
        frame_number,
        time_cpu_cycles,
        detected,
        tlv_count,
        sub_frame,
    ) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError("radar packet does not start with the magic word")
    if total_len != len(data):
        raise DecodeError(f"totalPacketLen says {total_len} bytes, packet has {len(data)}")

    points_raw: bytes | None = None
    side_raw: bytes | None = None
    offset = HEADER_BYTES
    for _ in range(tlv_count):
        if offset + _TLV_HEADER.size > total_len:
            raise DecodeError("TLV header runs past the end of the packet")
        tlv_type, length = _TLV_HEADER.unpack_from(data, offset)
        offset += _TLV_HEADER.size
        if length > total_len - offset:
            raise DecodeError(f"TLV type {tlv_type} length {length} runs past the packet")
        payload = data[offset : offset + length]
        offset += length
        if tlv_type == TLV_DETECTED_POINTS:
            if points_raw is not None:
                raise DecodeError("two detected-points TLVs in one packet")
            points_raw = payload
        elif tlv_type == TLV_SIDE_INFO:
            if side_raw is not None:
                raise DecodeError("two side-info TLVs in one packet")
            side_raw = payload
    if total_len - offset >= PADDING_BYTES:
        raise DecodeError(f"{total_len - offset} bytes after the TLVs: more than padding")

    return RadarFrame(
        version=version,
        platform=platform,
        frame_number=frame_number,
        sub_frame_number=sub_frame,
        time_cpu_cycles=time_cpu_cycles,
        target_count=detected,
        points=_points(points_raw, side_raw, detected),
    )


def _points(points_raw: bytes | None, side_raw: bytes | None, detected: int) -> tuple[RadarPoint, ...]:
    if side_raw is not None and len(side_raw) != detected * _SIDE_INFO.size:
        raise DecodeError(f"side info holds {len(side_raw)} bytes for {detected} points")
    if points_raw is None:
        return ()
    if len(points_raw) != detected * _POINT.size:
        raise DecodeError(f"point list holds {len(points_raw)} bytes for {detected} points")
    sides = (
        [(snr / 10, noise / 10) for snr, noise in _SIDE_INFO.iter_unpack(side_raw)]
        if side_raw is not None
        else [(None, None)] * detected
    )
    points = []
    for (x, y, z, v), (snr_db, noise_db) in zip(_POINT.iter_unpack(points_raw), sides, strict=True):
        if not all(math.isfinite(c) for c in (x, y, z, v)):
            raise DecodeError("a detected point has a non-finite coordinate or velocity")
        points.append(RadarPoint(x_m=x, y_m=y, z_m=z, velocity_m_s=v, snr_db=snr_db, noise_db=noise_db))
    return tuple(points)


def encode_frame(
    frame_number: int,
    points: Sequence[RadarPoint] = (),
    *,
    time_cpu_cycles: int = 0,
    sub_frame_number: int = 0,
    version: int = DEFAULT_VERSION,
    platform: int = DEFAULT_PLATFORM,
    extra_tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """Build a packet as the demo sends it (for simulators and tests).

    Points go in a type 1 TLV (left out when there are none, as the demo does); a
    type 7 TLV follows when every point has SNR and noise. ``extra_tlvs`` are
    appended as given. Values are rounded to float32 and 0.1 dB on the way.
    """
    given = [p.snr_db is not None or p.noise_db is not None for p in points]
    complete = [(p.snr_db, p.noise_db) for p in points if p.snr_db is not None and p.noise_db is not None]
    if any(given) and len(complete) != len(points):
        raise ValueError("give SNR and noise for every point or for none")
    tlvs: list[tuple[int, bytes]] = []
    if points:
        body = b"".join(_POINT.pack(p.x_m, p.y_m, p.z_m, p.velocity_m_s) for p in points)
        tlvs.append((TLV_DETECTED_POINTS, body))
    if complete:
        side = b"".join(_SIDE_INFO.pack(round(snr * 10), round(noise * 10)) for snr, noise in complete)
        tlvs.append((TLV_SIDE_INFO, side))
    tlvs.extend(extra_tlvs)
    body = b"".join(_TLV_HEADER.pack(t, len(payload)) + payload for t, payload in tlvs)
    unpadded = HEADER_BYTES + len(body)
    total = -(-unpadded // PADDING_BYTES) * PADDING_BYTES
    for name, value in (
        ("frame_number", frame_number),
        ("time_cpu_cycles", time_cpu_cycles),
        ("sub_frame_number", sub_frame_number),
        ("version", version),
        ("platform", platform),
    ):
        if not 0 <= value <= _UINT32_MAX:
            raise ValueError(f"{name} must fit in a uint32, got {value}")
    header = _HEADER.pack(
        MAGIC,
        version,
        total,
        platform,
        frame_number,
        time_cpu_cycles,
        len(points),
        len(tlvs),
        sub_frame_number,
    )
    return header + body + bytes(total - unpadded)


class RadarStreamDecoder(StreamBuffer):
    """Decodes packets from bytes that arrive in arbitrary chunks.

    Garbage, a corrupt length or a packet cut short makes it slide to the next magic
    word. ``framing_errors`` counts losses of sync (one per stretch of bad bytes
    between good packets, however it was chunked); ``skipped_bytes`` counts the bytes
    thrown away. Between calls the buffer holds at most ``max_packet_bytes``.

    A packet whose last bytes could be the start of the next magic word is held back
    until the next bytes show whether it was cut short (otherwise it would swallow the
    next packet's start). That is rare (only unpadded packets ending in 0x02...); the
    next packet releases it, and a caller whose read timed out calls :meth:`flush`.
    """

    def __init__(self, *, max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES) -> None:
        if max_packet_bytes < HEADER_BYTES:
            raise ValueError(f"max_packet_bytes must be at least {HEADER_BYTES}")
        super().__init__()
        self._max_packet_bytes = max_packet_bytes
        self._scanned_to = 0

    def feed(self, data: bytes) -> list[RadarFrame]:
        """Add received bytes; return the frames they completed, oldest first."""
        self._buffer += data
        frames: list[RadarFrame] = []
        while (frame := self._next_frame(idle=False)) is not None:
            frames.append(frame)
        return frames

    def flush(self) -> list[RadarFrame]:
        """Release a complete packet held back for its tail; call when the line went quiet."""
        frames: list[RadarFrame] = []
        while (frame := self._next_frame(idle=True)) is not None:
            frames.append(frame)
        return frames

    def _next_frame(self, *, idle: bool) -> RadarFrame | None:
        """Decode the packet at the front of the buffer, or None if more bytes are needed."""
        buffer = self._buffer
        while True:
            start = buffer.find(MAGIC)
            if start < 0:
                # Keep a tail that could be the start of a magic word.
                self._discard(max(0, len(buffer) - (len(MAGIC) - 1)))
                return None
            if start > 0:
                self._discard(start)
            if len(buffer) < HEADER_BYTES:
                return None
            total_len = _HEADER.unpack_from(buffer)[2]
            if not HEADER_BYTES <= total_len <= self._max_packet_bytes:
                self._discard(len(MAGIC))
                continue
            # The magic word cannot overlap itself, so a new one starting anywhere
            # after ours and before our end means our packet was cut short.
            search_from = max(len(MAGIC), self._scanned_to)
            search_to = min(len(buffer), total_len + len(MAGIC) - 1)
            restart = buffer.find(MAGIC, search_from, search_to)
            if restart >= 0:
                self._discard(restart)
                continue
            self._scanned_to = max(len(MAGIC), search_to - (len(MAGIC) - 1))
            if len(buffer) < total_len:
                return None
            if not idle and self._magic_may_start_before(total_len):
                return None
            try:
                frame = decode_packet(bytes(buffer[:total_len]))
            except DecodeError:
                self._discard(len(MAGIC))
                continue
            del buffer[:total_len]
            self._scanned_to = 0
            self._resynced()
            return frame

    def _magic_may_start_before(self, end: int) -> bool:
        """Whether the buffer ends in the first bytes of a magic word that starts before ``end``.

        A packet whose tail is the start of the next magic word was cut short; decoding
        it would swallow the next packet's first bytes. So it waits for up to seven
        more bytes, which happens only when a packet's last bytes look like that.
        """
        buffer = self._buffer
        for start in range(max(len(MAGIC), len(buffer) - (len(MAGIC) - 1)), min(end, len(buffer))):
            if MAGIC.startswith(buffer[start:]):
                return True
        return False

    def _discard(self, count: int) -> None:
        if count > 0:
            self._scanned_to = 0
        super()._discard(count)
