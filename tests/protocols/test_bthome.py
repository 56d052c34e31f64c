"""BTHome v2 service data: spec examples, object table, encryption and replay guard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeagent.errors import DecodeError
from edgeagent.protocols.bthome import (
    OBJECT_TYPES,
    SERVICE_UUID,
    BTHomeDecryptor,
    BTHomeMeasurement,
    BTHomeReplayError,
    Value,
    decode,
    encode,
    encode_encrypted,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "bthome_v2.json").read_text())

# The bthome.io encryption example.
SPEC_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
SPEC_MAC = "54:48:E6:8F:80:A5"
SPEC_ENCRYPTED = bytes.fromhex("41e445f3c9962b332211006c7c4519")
OTHER_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda case: case["service_data_hex"])
def test_vectors(case: dict[str, Any]) -> None:
    assert VECTORS["service_uuid"] == SERVICE_UUID
    packet = decode(bytes.fromhex(case["service_data_hex"]))
    assert packet.values == pytest.approx(case["expect"])
    assert packet.complete
    assert not packet.encrypted


def test_spec_example_literal() -> None:
    packet = decode(bytes.fromhex("4002c40903bf13"))
    assert packet.measurements == (
        BTHomeMeasurement(object_id=0x02, name="temperature_c", value=25.0),
        BTHomeMeasurement(object_id=0x03, name="humidity_pct", value=50.55),
    )
    assert (packet.encrypted, packet.trigger_based, packet.mac, packet.counter) == (
        False,
        False,
        None,
        None,
    )


def test_reference_objects() -> None:
    data = bytes.fromhex(
        "44"  # v2, trigger based
        "0009"  # packet id 9
        "0161"  # battery 97 %
        "02ecfb"  # temperature -10.44 C
        "0c020c"  # voltage 3.074 V
        "2001"  # moisture: wet
        "40e803"  # distance 1000 mm
        "414e00"  # distance 7.8 m
    )
    packet = decode(data)
    assert packet.trigger_based
    assert packet.packet_id == 9
    assert packet.values == {
        "battery_pct": 97,
        "temperature_c": -10.44,
        "voltage_v": 3.074,
        "moisture": True,
        "distance_mm": 1000,
        "distance_m": 7.8,
    }
    assert packet.complete


def test_mac_included_in_the_payload() -> None:
    # Device info 0x42: MAC follows, least significant byte first; then pressure.
    packet = decode(bytes.fromhex("42b2188d38c1a404138a01"))
    assert packet.mac == "A4:C1:38:8D:18:B2"
    assert packet.values == {"pressure_hpa": 1008.83}


def test_unknown_object_id_ends_parsing_and_keeps_what_came_before() -> None:
    packet = decode(bytes.fromhex("400150fe010202c409"))
    assert packet.values == {"battery_pct": 80}
    assert packet.unknown_object_id == 0xFE
    assert not packet.complete


def test_repeated_object_names_are_numbered() -> None:
    packet = decode(encode([(0x02, 21.5), (0x02, 19.25), (0x45, -3.2)]))
    assert packet.values == {"temperature_c": 21.5, "temperature_c_2": 19.25, "temperature_c_3": -3.2}


def test_text_raw_and_dimmer_objects() -> None:
    packet = decode(bytes.fromhex("403c01033c0205530568656c6c6f5402beef"))
    assert [m.value for m in packet.measurements] == [-3, 5, "hello", b"\xbe\xef"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes.fromhex("2002c409"),  # version 1
        bytes.fromhex("6002c409"),  # version 3
        bytes.fromhex("4002c4"),  # temperature cut short
        bytes.fromhex("4053"),  # text without its length
        bytes.fromhex("405305414243"),  # text shorter than its length
        bytes.fromhex("405302ffff"),  # text that is not UTF-8
        bytes.fromhex("403c0301"),  # unknown dimmer event
        bytes.fromhex("42b2188d38"),  # MAC cut short
    ],
)
def test_malformed_service_data_raises_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


def test_spec_encryption_example() -> None:
    packet = decode(SPEC_ENCRYPTED, mac=SPEC_MAC, key=SPEC_KEY)
    assert packet.encrypted
    assert packet.counter == 0x00112233
    assert packet.values == {"temperature_c": 25.06, "humidity_pct": 50.55}


def test_encoder_reproduces_the_spec_encryption_example() -> None:
    data = encode_encrypted([(0x02, 25.06), (0x03, 50.55)], mac=SPEC_MAC, key=SPEC_KEY, counter=0x00112233)
    assert data == SPEC_ENCRYPTED


def test_encrypted_round_trip() -> None:
    objects: list[tuple[int, Value]] = [(0x01, 88), (0x0C, 2.95), (0x21, True), (0x40, 1234)]
    data = encode_encrypted(objects, mac="AA:BB:CC:DD:EE:FF", key=OTHER_KEY, counter=7, packet_id=3, trigger_based=True)
    packet = decode(data, mac="aa:bb:cc:dd:ee:ff", key=OTHER_KEY)
    assert packet.encrypted and packet.trigger_based
    assert (packet.counter, packet.packet_id) == (7, 3)
    assert packet.values == {"battery_pct": 88, "voltage_v": 2.95, "motion": True, "distance_mm": 1234}


def test_encrypted_packet_needs_key_and_mac() -> None:
    with pytest.raises(DecodeError, match="no key"):
        decode(SPEC_ENCRYPTED)
    with pytest.raises(DecodeError, match="MAC"):
        decode(SPEC_ENCRYPTED, key=SPEC_KEY)
    with pytest.raises(DecodeError, match="too short"):
        decode(SPEC_ENCRYPTED[:8], mac=SPEC_MAC, key=SPEC_KEY)


def test_wrong_key_is_rejected() -> None:
    with pytest.raises(DecodeError, match="wrong key"):
        decode(SPEC_ENCRYPTED, mac=SPEC_MAC, key=OTHER_KEY)
    decryptor = BTHomeDecryptor(mac=SPEC_MAC, key=OTHER_KEY)
    with pytest.raises(DecodeError, match="wrong key"):
        decryptor.decode(SPEC_ENCRYPTED)
    assert decryptor.last_counter is None


def test_wrong_mac_or_tampered_bytes_are_rejected() -> None:
    with pytest.raises(DecodeError):
        decode(SPEC_ENCRYPTED, mac="54:48:E6:8F:80:A6", key=SPEC_KEY)
    tampered = bytearray(SPEC_ENCRYPTED)
    tampered[3] ^= 0x01
    with pytest.raises(DecodeError):
        decode(bytes(tampered), mac=SPEC_MAC, key=SPEC_KEY)
    with pytest.raises(DecodeError):  # the counter is authenticated through the nonce
        decode(SPEC_ENCRYPTED[:7] + b"\x34" + SPEC_ENCRYPTED[8:], mac=SPEC_MAC, key=SPEC_KEY)


def test_decryptor_accepts_rising_counters_and_rejects_replays() -> None:
    decryptor = BTHomeDecryptor(mac=SPEC_MAC, key=SPEC_KEY)

    def sealed(counter: int) -> bytes:
        return encode_encrypted([(0x02, 20.0)], mac=SPEC_MAC, key=SPEC_KEY, counter=counter)

    assert decryptor.decode(sealed(10)).counter == 10
    assert decryptor.decode(sealed(11)).counter == 11
    for replayed in (sealed(11), sealed(10), sealed(0)):
        with pytest.raises(BTHomeReplayError, match="replayed"):
            decryptor.decode(replayed)
    assert decryptor.last_counter == 11
    assert decryptor.decode(sealed(500)).values == {"temperature_c": 20.0}
    assert issubclass(BTHomeReplayError, DecodeError)


def test_decryptor_restores_its_counter_and_refuses_plain_packets() -> None:
    decryptor = BTHomeDecryptor(mac=SPEC_MAC, key=SPEC_KEY, last_counter=0x00112233)
    with pytest.raises(BTHomeReplayError):
        decryptor.decode(SPEC_ENCRYPTED)
    with pytest.raises(DecodeError, match="plain"):
        decryptor.decode(bytes.fromhex("4002c40903bf13"))


def test_decryptor_refuses_a_packet_carrying_another_devices_mac() -> None:
    # bthome-ble's example of an encrypted packet that carries its MAC (54:48:E6:8F:80:A5).
    with_mac = bytes.fromhex("43a5808fe64854f196c06ffb4900112233f08ecbde")
    assert BTHomeDecryptor(mac=SPEC_MAC, key=SPEC_KEY).decode(with_mac).mac == SPEC_MAC
    assert decode(with_mac, key=SPEC_KEY).values == {"temperature_c": 25.06, "humidity_pct": 50.55}
    with pytest.raises(DecodeError, match="expected"):
        BTHomeDecryptor(mac="54:48:E6:8F:80:A6", key=SPEC_KEY).decode(with_mac)


def test_bad_keys_and_macs_are_configuration_errors() -> None:
    with pytest.raises(ValueError):
        BTHomeDecryptor(mac=SPEC_MAC, key=b"short")
    with pytest.raises(ValueError):
        BTHomeDecryptor(mac="not a mac", key=SPEC_KEY)
    with pytest.raises(ValueError):
        encode_encrypted([], mac=SPEC_MAC, key=SPEC_KEY, counter=-1)


_SAMPLE_VALUES: dict[str, Value] = {
    "text": "roadside",
    "raw": b"\x00\x01",
    "dimmer_steps": -4,
}


def _sample(object_id: int) -> Value:
    kind = OBJECT_TYPES[object_id]
    if kind.name in _SAMPLE_VALUES:
        return _SAMPLE_VALUES[kind.name]
    if kind.binary:
        return True
    if object_id == 0x58:
        return -7.0  # 0.35 degree steps: -20 x 0.35
    if kind.factor == 1:
        return -5 if kind.signed else 42
    return round((-123 if kind.signed else 123) * kind.factor, kind.decimals)


@pytest.mark.parametrize("object_id", sorted(set(OBJECT_TYPES) - {0x00}), ids=hex)
def test_every_known_object_round_trips(object_id: int) -> None:
    value = _sample(object_id)
    packet = decode(encode([(object_id, value)], packet_id=200))
    assert packet.packet_id == 200
    assert [m.value for m in packet.measurements] == [value]
    assert packet.measurements[0].object_id == object_id


def test_encoder_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError):
        encode([(0x01, 256)])
    with pytest.raises(ValueError):
        encode([(0xFE, 1)])
    with pytest.raises(ValueError):
        encode([(0x02, "warm")])
    with pytest.raises(ValueError):
        encode([], packet_id=256)
