"""The signed envelope a fleet push travels in, and the reason codes of a refusal.

A bundle is one JSON object::

    {"format": "edgeagent-bundle/1", "kind": "config" | "trust", "version": 13,
     "issued_at": 1767225600, "expires_at": 1769817600 | null,
     "targets": {"gateways": ["gw-0417"], "groups": ["district-7"]},
     "payload_sha256": "<hex>", "payload": "<base64 of the TOML (or trust JSON) bytes>",
     "signatures": [{"key_id": "3f2a9c...", "sig": "<base64 of 64 bytes>"}]}

Each signature is Ed25519 over ``DOMAIN`` followed by the canonical JSON (sorted keys,
no spaces, ASCII, integers only) of every field but ``signatures``. The domain prefix
keeps a signature over a bundle from meaning anything elsewhere. A receiver checks, in
this order and before it decodes the payload: the size, the envelope's exact shape
(unknown or repeated keys, floats and NaN are refused, so the bytes signed are the
bytes read), then the signatures against its trust. Only then is the payload decoded,
and its SHA-256 compared. A signature from a key the gateway trusts that does not
verify is ``bad_signature`` (so is any byte changed after signing); signatures only by
keys it does not know are ``untrusted_key``; too few good ones ``below_threshold``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeagent.fleet.trust import Trust, private_key_id

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

BUNDLE_FORMAT = "edgeagent-bundle/1"
DOMAIN = b"edgeagent-bundle-v1\x00"
# Brokers cap retained messages (EMQX: 1 MB by default); a whole site's TOML is a few KiB.
MAX_BUNDLE_BYTES = 512 * 1024
KINDS = ("config", "trust")
_FIELDS = frozenset(
    {"format", "kind", "version", "issued_at", "expires_at", "targets", "payload_sha256", "payload", "signatures"}
)
MAX_VERSION = 2**53 - 1  # exact in every JSON reader

# Reason codes: stable, documented in docs/fleet.md; a fleet tool may switch on them.
APPLIED = "applied"
REJECTED = "rejected"
ROLLED_BACK = "rolled_back"
BAD_SIGNATURE = "bad_signature"
UNTRUSTED_KEY = "untrusted_key"
BELOW_THRESHOLD = "below_threshold"
NOT_NEWER = "not_newer"
EXPIRED = "expired"
NOT_FOR_ME = "not_for_me"
SCHEMA = "schema"
REFERENCE = "reference"
RULE = "rule"
DRY_RUN = "dry_run"
HEALTH = "health"
INTERRUPTED = "interrupted"
SIGNATURE_CODES = frozenset({BAD_SIGNATURE, UNTRUSTED_KEY, BELOW_THRESHOLD})


class Rejected(Exception):
    """A bundle refused before anything changed: ``code`` is one of the reason codes above."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class Bundle:
    kind: str
    version: int
    issued_at: int
    expires_at: int | None
    gateways: tuple[str, ...]
    groups: tuple[str, ...]
    payload_sha256: str
    payload_b64: str
    signatures: tuple[tuple[str, bytes], ...]
    signed: bytes  # what the signatures cover: DOMAIN + canonical envelope without them
    digest: str  # SHA-256 of the canonical envelope with its signatures: this bundle's identity
    size: int

    def is_for(self, gateway_id: str, groups: Sequence[str]) -> bool:
        return gateway_id in self.gateways or any(g in self.groups for g in groups)

    def describe_targets(self) -> str:
        parts = [f"gateways {', '.join(self.gateways)}"] if self.gateways else []
        parts += [f"groups {', '.join(self.groups)}"] if self.groups else []
        return "; ".join(parts)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} given twice")
        out[key] = value
    return out


def _no_float(text: str) -> None:
    raise ValueError(f"a number with a fraction or exponent ({text}): only integers are allowed")


def _shape(doc: object) -> str | None:
    """What is wrong with the envelope's shape, or None."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    if set(doc) != _FIELDS:
        missing, extra = sorted(_FIELDS - set(doc)), sorted(set(doc) - _FIELDS)
        return "; ".join(
            [f"missing {', '.join(missing)}"] * bool(missing) + [f"unknown key {', '.join(extra)}"] * bool(extra)
        )
    if doc["format"] != BUNDLE_FORMAT:
        return f"format: expected {BUNDLE_FORMAT!r}, got {doc['format']!r}"
    if doc["kind"] not in KINDS:
        return f"kind: 'config' or 'trust', got {doc['kind']!r}"
    for key in ("version", "issued_at"):
        if type(doc[key]) is not int or not 0 < doc[key] <= MAX_VERSION:
            return f"{key}: a positive integer, got {doc[key]!r}"
    if doc["expires_at"] is not None and (type(doc["expires_at"]) is not int or doc["expires_at"] <= 0):
        return f"expires_at: a positive integer or null, got {doc['expires_at']!r}"
    targets = doc["targets"]
    if not isinstance(targets, dict) or set(targets) != {"gateways", "groups"}:
        return "targets: an object with exactly gateways and groups"
    for key in ("gateways", "groups"):
        if not isinstance(targets[key], list) or not all(isinstance(t, str) and t for t in targets[key]):
            return f"targets.{key}: a list of names"
    if not targets["gateways"] and not targets["groups"]:
        return "targets: names no gateway and no group"
    sha = doc["payload_sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        return "payload_sha256: 64 lowercase hex digits"
    if not isinstance(doc["payload"], str):
        return "payload: a base64 string"
    sigs = doc["signatures"]
    if not isinstance(sigs, list) or not all(
        isinstance(s, dict) and set(s) == {"key_id", "sig"} and all(isinstance(v, str) for v in s.values())
        for s in sigs
    ):
        return "signatures: a list of {key_id, sig} objects"
    return None


def read_bundle(raw: bytes) -> Bundle:
    """The envelope, checked for size and shape only: nothing of the payload is decoded here."""
    if len(raw) > MAX_BUNDLE_BYTES:
        raise Rejected(SCHEMA, f"the bundle is {len(raw)} bytes; at most {MAX_BUNDLE_BYTES} are accepted")
    try:
        doc = json.loads(raw, object_pairs_hook=_no_duplicates, parse_float=_no_float, parse_constant=_no_float)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise Rejected(SCHEMA, f"the bundle is not a JSON envelope: {exc}") from exc
    problem = _shape(doc)
    if problem is not None:
        raise Rejected(SCHEMA, f"bundle envelope: {problem}")
    sigs = []
    for i, s in enumerate(doc["signatures"]):
        try:
            sigs.append((s["key_id"], base64.b64decode(s["sig"], validate=True)))
        except binascii.Error as exc:
            raise Rejected(SCHEMA, f"bundle envelope: signatures[{i}].sig is not base64") from exc
    unsigned = {k: v for k, v in doc.items() if k != "signatures"}
    return Bundle(
        kind=doc["kind"],
        version=doc["version"],
        issued_at=doc["issued_at"],
        expires_at=doc["expires_at"],
        gateways=tuple(doc["targets"]["gateways"]),
        groups=tuple(doc["targets"]["groups"]),
        payload_sha256=doc["payload_sha256"],
        payload_b64=doc["payload"],
        signatures=tuple(sigs),
        signed=DOMAIN + canonical(unsigned),
        digest=hashlib.sha256(canonical(doc)).hexdigest(),
        size=len(raw),
    )


def split_bundles(body: bytes) -> list[bytes]:
    """An HTTP body holds one bundle, or a JSON array of them (a trust bundle beside a config, say).

    The array is read with the envelope's own strict rules; each element goes on as its
    canonical bytes (its digest, and so its identity, is the same as published alone).
    """
    if not body.lstrip().startswith(b"["):
        return [body]
    try:
        doc = json.loads(body, object_pairs_hook=_no_duplicates, parse_float=_no_float, parse_constant=_no_float)
    except (ValueError, RecursionError) as exc:
        raise Rejected(SCHEMA, f"the document is not JSON: {exc}") from exc
    return [canonical(item) for item in doc]


def verify(bundle: Bundle, trust: Trust) -> list[str]:
    """The ids of the trusted keys whose signatures verify; Rejected unless they reach the threshold."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    good: list[str] = []
    bad: list[str] = []
    unknown: list[str] = []
    for key, sig in bundle.signatures:
        public = trust.keys.get(key)
        if public is None:
            unknown.append(key)
            continue
        if key in good:
            continue  # one key counts once, however often it signs
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(sig, bundle.signed)
        except InvalidSignature:
            bad.append(key)
        else:
            good.append(key)
    if len(good) >= trust.threshold:
        return good
    if bad:
        raise Rejected(
            BAD_SIGNATURE,
            f"the signature of key {bad[0]} does not verify: the bundle was changed after signing",
        )
    if good:
        raise Rejected(
            BELOW_THRESHOLD, f"{len(good)} good signature(s) ({', '.join(good)}); {trust.threshold} are needed"
        )
    if unknown:
        raise Rejected(
            UNTRUSTED_KEY, f"signed by {', '.join(unknown)}, none of them trusted here (key epoch {trust.epoch})"
        )
    raise Rejected(BELOW_THRESHOLD, f"no signatures; {trust.threshold} are needed")


def payload_of(bundle: Bundle) -> bytes:
    """The payload's bytes, once the signatures are verified; its digest must match the signed one."""
    try:
        payload = base64.b64decode(bundle.payload_b64, validate=True)
    except binascii.Error as exc:
        raise Rejected(SCHEMA, "payload: not base64") from exc
    if hashlib.sha256(payload).hexdigest() != bundle.payload_sha256:
        raise Rejected(BAD_SIGNATURE, "the payload does not match payload_sha256")
    return payload


def sign_bundle(
    payload: bytes,
    *,
    kind: str,
    version: int,
    keys: Sequence[Ed25519PrivateKey],
    issued_at: int,
    gateways: Sequence[str] = (),
    groups: Sequence[str] = (),
    expires_at: int | None = None,
) -> bytes:
    """A bundle's bytes, signed by every key given (an integrator's side; tests use it too)."""
    doc: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "kind": kind,
        "version": version,
        "issued_at": issued_at,
        "expires_at": expires_at,
        "targets": {"gateways": list(gateways), "groups": list(groups)},
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload": base64.b64encode(payload).decode(),
    }
    problem = _shape({**doc, "signatures": []})
    if problem is not None:
        raise ValueError(problem)
    message = DOMAIN + canonical(doc)
    doc["signatures"] = [{"key_id": private_key_id(k), "sig": base64.b64encode(k.sign(message)).decode()} for k in keys]
    return json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n"
