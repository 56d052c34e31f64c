"""Whom a gateway believes: Ed25519 public keys with ids, a signature threshold, a key epoch.

The trust file is JSON, written by ``edgeagent fleet trust``::

    {"format": "edgeagent-trust/1", "epoch": 1, "threshold": 1,
     "keys": [{"id": "3f2a9c...", "public_key": "<base64 of the 32 raw bytes>"}]}

A key's id is derived from the key (the first 16 hex digits of its SHA-256), so an id
cannot name a different key than the one beside it. The file installed beside the
config is the first trust; a trust bundle (signed by the current threshold, with a
higher epoch) replaces it by a copy in the state folder. Whichever of the two has the
higher epoch is in force, so a technician can still re-provision a gateway locally.

Keys are loaded here; ``cryptography`` is imported only where a key is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

TRUST_FORMAT = "edgeagent-trust/1"
KEY_BYTES = 32
MAX_TRUST_BYTES = 64 * 1024
MAX_KEYS = 64


class TrustError(ValueError):
    """A trust document (file or bundle payload) is not what it must be; the text says why."""


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Trust:
    epoch: int
    threshold: int
    keys: dict[str, bytes]  # key id -> raw public key

    def to_json(self) -> bytes:
        doc = {
            "format": TRUST_FORMAT,
            "epoch": self.epoch,
            "threshold": self.threshold,
            "keys": [{"id": k, "public_key": base64.b64encode(v).decode()} for k, v in sorted(self.keys.items())],
        }
        return (json.dumps(doc, indent=2) + "\n").encode()


def _int(doc: dict[str, Any], key: str, low: int) -> int:
    value = doc.get(key)
    if type(value) is not int or value < low:
        raise TrustError(f"{key}: an integer >= {low}, got {value!r}")
    return value


def parse_trust(data: bytes) -> Trust:
    """A trust document from its bytes; every rule checked, nothing guessed."""
    if len(data) > MAX_TRUST_BYTES:
        raise TrustError(f"larger than {MAX_TRUST_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise TrustError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise TrustError("not a JSON object")
    unknown = sorted(set(doc) - {"format", "epoch", "threshold", "keys"})
    if unknown:
        raise TrustError(f"unknown keys: {', '.join(unknown)}")
    if doc.get("format") != TRUST_FORMAT:
        raise TrustError(f"format: expected {TRUST_FORMAT!r}, got {doc.get('format')!r}")
    epoch, threshold = _int(doc, "epoch", 1), _int(doc, "threshold", 1)
    entries = doc.get("keys")
    if not isinstance(entries, list) or not entries or len(entries) > MAX_KEYS:
        raise TrustError(f"keys: a list of 1 to {MAX_KEYS} keys")
    keys: dict[str, bytes] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"id", "public_key"}:
            raise TrustError(f"keys[{i}]: an object with exactly id and public_key")
        try:
            raw = base64.b64decode(str(entry["public_key"]), validate=True)
        except binascii.Error as exc:
            raise TrustError(f"keys[{i}].public_key: not base64") from exc
        if len(raw) != KEY_BYTES:
            raise TrustError(f"keys[{i}].public_key: an Ed25519 key is {KEY_BYTES} bytes, got {len(raw)}")
        if entry["id"] != key_id(raw):
            raise TrustError(f"keys[{i}].id: {entry['id']!r} is not this key's id ({key_id(raw)})")
        if raw in keys.values():
            raise TrustError(f"keys[{i}]: listed twice")
        keys[entry["id"]] = raw
    if threshold > len(keys):
        raise TrustError(f"threshold: {threshold} signatures needed but only {len(keys)} keys listed")
    return Trust(epoch, threshold, keys)


def read_trust_file(path: Path) -> Trust:
    """The trust file at ``path``; a TrustError names what is wrong (the caller names the key)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_TRUST_BYTES + 1)
    except OSError as exc:
        raise TrustError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return parse_trust(data)
    except TrustError as exc:
        raise TrustError(f"{path}: {exc}") from exc


# -- key files (the integrator's side) ------------------------------------------------------


def generate_key() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as PEM: (PKCS#8 private key, SubjectPublicKeyInfo public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise TrustError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise TrustError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError(f"{path}: not an Ed25519 key")
    return key


def load_public_key(path: Path) -> bytes:
    """The raw 32 bytes of the Ed25519 public key in a PEM file (``signing.pub``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise TrustError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise TrustError(f"{path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise TrustError(f"{path}: not an Ed25519 key")
    return key.public_bytes_raw()


def private_key_id(key: Ed25519PrivateKey) -> str:
    return key_id(key.public_key().public_bytes_raw())
