"""BTHome v2 BLE advertisements (service data under UUID 0xFCD2), plain and encrypted.

Spec facts used (bthome.io format and encryption pages; object table as implemented
by the reference parser ``bthome-ble``):

- Byte 0 is the device information: bit 0 encrypted, bit 1 MAC included (six bytes
  follow, least significant first), bit 2 trigger based (irregular advertising),
  bits 5-7 the BTHome version, which must be 2.
- Then objects: an id byte and a little-endian value whose size and scale the id
  fixes (``0x02 C409`` is 2500 x 0.01 = 25.00 °C). Text (0x53) and raw (0x54) carry
  a length byte. A receiver stops at an id it does not know, since it cannot tell
  that object's size; this module keeps the objects before it and says where it
  stopped (``unknown_object_id``).
- 0x00 is the packet id, which senders bump per new reading; receivers use it to
  drop the repeats of one advertisement.
- Encryption: AES-CCM with a 16-byte key and a 4-byte MIC, no associated data; nonce
  = MAC (6 bytes, as written) + ``D2 FC`` + device-info byte + counter (uint32 LE).
  Payload after the device-info byte (and MAC, if included): ciphertext, counter
  (4 bytes), MIC (4 bytes). Spec example: key ``231d39c1d7cc1ab1aee224cd096db932``,
  MAC 54:48:E6:8F:80:A5, counter 0x00112233, plaintext ``02CA0903BF13`` gives
  ``41 E445F3C9962B 33221100 6C7C4519``.

Names carry units (``temperature_c``, ``distance_mm``); binary objects decode to
``bool``. The counter is not checked here, only in :class:`BTHomeDecryptor`, which
holds the per-device state a replay check needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeagent.errors import DecodeError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

SERVICE_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
VERSION = 2
KEY_BYTES = 16
MIC_BYTES = 4
COUNTER_BYTES = 4

_FLAG_ENCRYPTED = 0x01
_FLAG_MAC_INCLUDED = 0x02
_FLAG_TRIGGER_BASED = 0x04
_UUID_LE = b"\xd2\xfc"
_PACKET_ID = 0x00
_TEXT = 0x53
_RAW = 0x54
_DIMMER = 0x3C

Value = float | int | bool | str | bytes


@dataclass(frozen=True, slots=True)
class _ObjectType:
    """How one object id is laid out: size in bytes, signedness and scale."""

    name: str
    size: int
    signed: bool = False
    factor: float = 1
    decimals: int = 0
    binary: bool = False


def _scaled(name: str, size: int, decimals: int, *, signed: bool = False) -> _ObjectType:
    return _ObjectType(name, size, signed, 10.0**-decimals, decimals)


def _binary(name: str) -> _ObjectType:
    return _ObjectType(name, 1, binary=True)


OBJECT_TYPES: dict[int, _ObjectType] = {
    0x00: _ObjectType("packet_id", 1),
    0x01: _ObjectType("battery_pct", 1),
    0x02: _scaled("temperature_c", 2, 2, signed=True),
    0x03: _scaled("humidity_pct", 2, 2),
    0x04: _scaled("pressure_hpa", 3, 2),
    0x05: _scaled("illuminance_lux", 3, 2),
    0x06: _scaled("mass_kg", 2, 2),
    0x07: _scaled("mass_lb", 2, 2),
    0x08: _scaled("dew_point_c", 2, 2, signed=True),
    0x09: _ObjectType("count", 1),
    0x0A: _scaled("energy_kwh", 3, 3),
    0x0B: _scaled("power_w", 3, 2),
    0x0C: _scaled("voltage_v", 2, 3),
    0x0D: _ObjectType("pm2_5_ug_m3", 2),
    0x0E: _ObjectType("pm10_ug_m3", 2),
    0x0F: _binary("generic"),
    0x10: _binary("power"),
    0x11: _binary("opening"),
    0x12: _ObjectType("co2_ppm", 2),
    0x13: _ObjectType("tvoc_ug_m3", 2),
    0x14: _scaled("moisture_pct", 2, 2),
    0x15: _binary("battery_low"),
    0x16: _binary("battery_charging"),
    0x17: _binary("carbon_monoxide"),
    0x18: _binary("cold"),
    0x19: _binary("connectivity"),
    0x1A: _binary("door"),
    0x1B: _binary("garage_door"),
    0x1C: _binary("gas"),
    0x1D: _binary("heat"),
    0x1E: _binary("light"),
    0x1F: _binary("lock"),
    0x20: _binary("moisture"),
    0x21: _binary("motion"),
    0x22: _binary("moving"),
    0x23: _binary("occupancy"),
    0x24: _binary("plug"),
    0x25: _binary("presence"),
    0x26: _binary("problem"),
    0x27: _binary("running"),
    0x28: _binary("safety"),
    0x29: _binary("smoke"),
    0x2A: _binary("sound"),
    0x2B: _binary("tamper"),
    0x2C: _binary("vibration"),
    0x2D: _binary("window"),
    0x2E: _ObjectType("humidity_pct", 1),
    0x2F: _ObjectType("moisture_pct", 1),
    0x3A: _ObjectType("button_event", 1),
    0x3C: _ObjectType("dimmer_steps", 2),
    0x3D: _ObjectType("count", 2),
    0x3E: _ObjectType("count", 4),
    0x3F: _scaled("rotation_deg", 2, 1, signed=True),
    0x40: _ObjectType("distance_mm", 2),
    0x41: _scaled("distance_m", 2, 1),
    0x42: _scaled("duration_s", 3, 3),
    0x43: _scaled("current_a", 2, 3),
    0x44: _scaled("speed_m_s", 2, 2),
    0x45: _scaled("temperature_c", 2, 1, signed=True),
    0x46: _scaled("uv_index", 1, 1),
    0x47: _scaled("volume_l", 2, 1),
    0x48: _ObjectType("volume_ml", 2),
    0x49: _scaled("volume_flow_rate_m3_h", 2, 3),
    0x4A: _scaled("voltage_v", 2, 1),
    0x4B: _scaled("gas_m3", 3, 3),
    0x4C: _scaled("gas_m3", 4, 3),
    0x4D: _scaled("energy_kwh", 4, 3),
    0x4E: _scaled("volume_l", 4, 3),
    0x4F: _scaled("water_l", 4, 3),
    0x50: _ObjectType("timestamp_s", 4),
    0x51: _scaled("acceleration_m_s2", 2, 3),
    0x52: _scaled("gyroscope_deg_s", 2, 3),
    0x53: _ObjectType("text", 0),
    0x54: _ObjectType("raw", 0),
    0x55: _scaled("volume_storage_l", 4, 3),
    0x56: _ObjectType("conductivity_us_cm", 2),
    0x57: _ObjectType("temperature_c", 1, signed=True),
    0x58: _ObjectType("temperature_c", 1, signed=True, factor=0.35, decimals=2),
    0x59: _ObjectType("count", 1, signed=True),
    0x5A: _ObjectType("count", 2, signed=True),
    0x5B: _ObjectType("count", 4, signed=True),
    0x5C: _scaled("power_w", 4, 2, signed=True),
    0x5D: _scaled("current_a", 2, 3, signed=True),
    0x5E: _scaled("direction_deg", 2, 2),
    0x5F: _scaled("precipitation_mm", 2, 1),
    0x60: _ObjectType("channel", 1),
    0x61: _ObjectType("rotational_speed_rpm", 2),
    0x62: _scaled("speed_m_s", 4, 6, signed=True),
    0x63: _scaled("acceleration_m_s2", 4, 6, signed=True),
    0x64: _ObjectType("light_level", 1),
}
"""Object ids this decoder knows. 0x3A is the raw button event code (1 press,
2 double, ...); 0x3C is decoded to signed dimmer steps (negative = rotated left)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BTHomeMeasurement:
    """One object of an advertisement, in the unit its name carries."""

    object_id: int
    name: str
    value: Value


@dataclass(frozen=True, slots=True, kw_only=True)
class BTHomePacket:
    """One decoded advertisement.

    ``unknown_object_id`` is set when parsing stopped at an id this module does not
    know: ``measurements`` then holds only the objects before it (``complete`` is
    False). ``counter`` is the encryption counter, ``None`` for plain packets.
    """

    encrypted: bool
    trigger_based: bool
    mac: str | None
    packet_id: int | None
    counter: int | None
    measurements: tuple[BTHomeMeasurement, ...]
    unknown_object_id: int | None = None

    @property
    def complete(self) -> bool:
        """Whether every object in the advertisement was decoded."""
        return self.unknown_object_id is None

    @property
    def values(self) -> dict[str, Value]:
        """Measurements by name; repeats of a name get ``_2``, ``_3``... in order."""
        result: dict[str, Value] = {}
        seen: dict[str, int] = {}
        for measurement in self.measurements:
            count = seen.get(measurement.name, 0) + 1
            seen[measurement.name] = count
            key = measurement.name if count == 1 else f"{measurement.name}_{count}"
            result[key] = measurement.value
        return result


class BTHomeReplayError(DecodeError):
    """An encrypted packet's counter was not above the last accepted one.

    BLE senders repeat each advertisement several times, so most of these are
    harmless duplicates rather than attacks; callers may count them apart.
    """


def decode(service_data: bytes, *, mac: str | None = None, key: bytes | None = None) -> BTHomePacket:
    """Decode the service data of UUID 0xFCD2 (without the UUID itself).

    Encrypted packets need ``key`` and the sender's ``mac`` (unless the packet
    carries its MAC). There is no replay check here; see :class:`BTHomeDecryptor`.
    """
    cipher = _cipher(key) if key is not None else None
    return _decode(bytes(service_data), mac=_mac_bytes(mac) if mac else None, cipher=cipher)


class BTHomeDecryptor:
    """Decrypts one device's advertisements and refuses replays and downgrades.

    ``last_counter`` can be restored from storage after a restart; without it the
    first packet seen is accepted whatever its counter. Plain packets are refused,
    since a device with a key must not be spoofed by an unencrypted sender.
    """

    def __init__(self, *, mac: str, key: bytes, last_counter: int | None = None) -> None:
        self._mac = _mac_bytes(mac)
        self._cipher = _cipher(key)
        self._last_counter = last_counter

    @property
    def last_counter(self) -> int | None:
        """Counter of the last packet accepted."""
        return self._last_counter

    def decode(self, service_data: bytes) -> BTHomePacket:
        """Decrypt and decode; raise DecodeError on a wrong key or corrupt packet."""
        packet = _decode(bytes(service_data), mac=self._mac, cipher=self._cipher)
        if packet.counter is None:
            raise DecodeError("plain packet from a device that encrypts: refused")
        if packet.mac is not None and packet.mac != _mac_text(self._mac):
            raise DecodeError(f"packet carries MAC {packet.mac}, expected {_mac_text(self._mac)}")
        if self._last_counter is not None and packet.counter <= self._last_counter:
            raise BTHomeReplayError(f"replayed: counter {packet.counter} <= last accepted {self._last_counter}")
        self._last_counter = packet.counter
        return packet


def encode(
    objects: Iterable[tuple[int, Value]],
    *,
    packet_id: int | None = None,
    trigger_based: bool = False,
) -> bytes:
    """Build plain service data from ``(object_id, value)`` pairs in their units."""
    info = (VERSION << 5) | (_FLAG_TRIGGER_BASED if trigger_based else 0)
    return bytes([info]) + _encode_objects(objects, packet_id)


def encode_encrypted(
    objects: Iterable[tuple[int, Value]],
    *,
    mac: str,
    key: bytes,
    counter: int,
    packet_id: int | None = None,
    trigger_based: bool = False,
) -> bytes:
    """Build encrypted service data, as a device with a bind key sends it."""
    if not 0 <= counter <= 0xFFFFFFFF:
        raise ValueError(f"counter must fit in a uint32, got {counter}")
    info = (VERSION << 5) | _FLAG_ENCRYPTED | (_FLAG_TRIGGER_BASED if trigger_based else 0)
    counter_bytes = counter.to_bytes(COUNTER_BYTES, "little")
    nonce = _mac_bytes(mac) + _UUID_LE + bytes([info]) + counter_bytes
    sealed = _cipher(key).encrypt(nonce, _encode_objects(objects, packet_id), None)
    ciphertext, mic = sealed[:-MIC_BYTES], sealed[-MIC_BYTES:]
    return bytes([info]) + ciphertext + counter_bytes + mic


def _decode(data: bytes, *, mac: bytes | None, cipher: AESCCM | None) -> BTHomePacket:
    if not data:
        raise DecodeError("empty BTHome service data")
    info = data[0]
    version = info >> 5
    if version != VERSION:
        raise DecodeError(f"BTHome version {version}, only {VERSION} is supported")
    body = data[1:]
    payload_mac: bytes | None = None
    if info & _FLAG_MAC_INCLUDED:
        if len(body) < 6:
            raise DecodeError("BTHome packet too short for the MAC it says it carries")
        payload_mac, body = body[:6][::-1], body[6:]
    counter: int | None = None
    if info & _FLAG_ENCRYPTED:
        if cipher is None:
            raise DecodeError("BTHome packet is encrypted and no key is configured")
        nonce_mac = payload_mac or mac
        if nonce_mac is None:
            raise DecodeError("BTHome packet is encrypted and the sender's MAC is unknown")
        if len(body) < COUNTER_BYTES + MIC_BYTES:
            raise DecodeError("encrypted BTHome packet too short for counter and MIC")
        ciphertext = body[: -COUNTER_BYTES - MIC_BYTES]
        counter_bytes = body[-COUNTER_BYTES - MIC_BYTES : -MIC_BYTES]
        mic = body[-MIC_BYTES:]
        nonce = nonce_mac + _UUID_LE + bytes([info]) + counter_bytes
        from cryptography.exceptions import InvalidTag

        try:
            body = cipher.decrypt(nonce, ciphertext + mic, None)
        except InvalidTag as exc:
            raise DecodeError("BTHome decryption failed: wrong key or corrupt packet") from exc
        counter = int.from_bytes(counter_bytes, "little")
    measurements, packet_id, unknown = _decode_objects(body)
    return BTHomePacket(
        encrypted=counter is not None,
        trigger_based=bool(info & _FLAG_TRIGGER_BASED),
        mac=_mac_text(payload_mac) if payload_mac is not None else None,
        packet_id=packet_id,
        counter=counter,
        measurements=measurements,
        unknown_object_id=unknown,
    )


def _decode_objects(
    payload: bytes,
) -> tuple[tuple[BTHomeMeasurement, ...], int | None, int | None]:
    measurements: list[BTHomeMeasurement] = []
    packet_id: int | None = None
    pos = 0
    while pos < len(payload):
        object_id = payload[pos]
        kind = OBJECT_TYPES.get(object_id)
        if kind is None:
            return tuple(measurements), packet_id, object_id
        pos += 1
        size = kind.size
        if object_id in (_TEXT, _RAW):
            if pos >= len(payload):
                raise DecodeError(f"object 0x{object_id:02X} is missing its length byte")
            size = payload[pos]
            pos += 1
        if pos + size > len(payload):
            raise DecodeError(f"object 0x{object_id:02X} is cut short")
        raw = payload[pos : pos + size]
        pos += size
        if object_id == _PACKET_ID:
            packet_id = raw[0]
            continue
        measurements.append(BTHomeMeasurement(object_id=object_id, name=kind.name, value=_value(object_id, kind, raw)))
    return tuple(measurements), packet_id, None


def _value(object_id: int, kind: _ObjectType, raw: bytes) -> Value:
    if object_id == _TEXT:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("BTHome text object is not UTF-8") from exc
    if object_id == _RAW:
        return raw
    if object_id == _DIMMER:
        event, steps = raw
        if event > 2:
            raise DecodeError(f"unknown dimmer event {event}")
        return -steps if event == 1 else steps if event == 2 else 0
    number = int.from_bytes(raw, "little", signed=kind.signed)
    if kind.binary:
        return bool(number)
    if kind.factor == 1:
        return number
    return round(number * kind.factor, kind.decimals)


def _encode_objects(objects: Iterable[tuple[int, Value]], packet_id: int | None) -> bytes:
    out = bytearray()
    if packet_id is not None:
        if not 0 <= packet_id <= 0xFF:
            raise ValueError(f"packet id must be 0..255, got {packet_id}")
        out += bytes([_PACKET_ID, packet_id])
    for object_id, value in objects:
        kind = OBJECT_TYPES.get(object_id)
        if kind is None or object_id == _PACKET_ID:
            raise ValueError(f"cannot encode object id 0x{object_id:02X}")
        out.append(object_id)
        out += _encode_value(object_id, kind, value)
    return bytes(out)


def _encode_value(object_id: int, kind: _ObjectType, value: Value) -> bytes:
    if object_id in (_TEXT, _RAW):
        raw = value.encode("utf-8") if isinstance(value, str) else value
        if not isinstance(raw, bytes) or len(raw) > 0xFF:
            raise ValueError(f"object 0x{object_id:02X} takes up to 255 bytes of text or raw")
        return bytes([len(raw)]) + raw
    if isinstance(value, str | bytes):
        raise ValueError(f"object 0x{object_id:02X} takes a number, got {value!r}")
    if object_id == _DIMMER:
        steps = int(value)
        if abs(steps) > 0xFF:
            raise ValueError(f"dimmer steps must be -255..255, got {steps}")
        event = 0 if steps == 0 else 1 if steps < 0 else 2
        return bytes([event, abs(steps)])
    number = round(value / kind.factor)
    try:
        return number.to_bytes(kind.size, "little", signed=kind.signed)
    except OverflowError as exc:
        raise ValueError(f"{value!r} does not fit object 0x{object_id:02X}") from exc


def _cipher(key: bytes | None) -> AESCCM:
    """AES-CCM for this key; cryptography is imported only where a key is (plain sensors never need it)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    return AESCCM(_check_key(key), tag_length=MIC_BYTES)


def _check_key(key: bytes | None) -> bytes:
    if key is None or len(key) != KEY_BYTES:
        raise ValueError(f"a BTHome key is {KEY_BYTES} bytes")
    return bytes(key)


def _mac_bytes(mac: str) -> bytes:
    digits = mac.replace(":", "").replace("-", "")
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02X}" for b in raw)
