"""The fleet's files under ``state_dir/fleet/``: written so that a kill at any instant leaves a whole state.

    last_good.json   the config last committed (version, payload): what a start runs
    candidate.json   the config being applied; renamed over last_good.json to commit
    pending.json     the marker: an apply is under way (version, previous version, bundle)
    trust.json       the trust a trust bundle installed (the one in /etc stays as shipped)
    state.json       the highest version ever applied (committed or rolled back), the
                     bundles already decided, the last outcome

Every file is written beside its final name (``.name.tmp``), flushed and fsync'd, renamed
into place, and the folder fsync'd, so a reader finds the old file or the new one,
whole, never a mix. An apply writes the candidate, then the marker; it never rewrites
last-good, which changes only by the rename that commits. The folder is private (0700,
files 0600): it holds the gateway's config, whose secrets are in files of their own but
whose hosts and layout are nobody else's business.

A file that cannot be read or does not hold what it must is treated as absent and
logged: the gateway falls back to what it can trust (last-good, else the local file).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LAST_GOOD = "last_good.json"
CANDIDATE = "candidate.json"
MARKER = "pending.json"
TRUST = "trust.json"
STATE = "state.json"
MAX_DECIDED = 64  # digests of bundles already decided, newest last


@dataclass(frozen=True, slots=True)
class SlotConfig:
    """A pushed config as kept in a slot: its payload and what the bundle said of it."""

    version: int
    bundle_digest: str
    payload: bytes
    issued_at: int
    expires_at: int | None
    applied_at: float

    @property
    def payload_sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "bundle_digest": self.bundle_digest,
            "payload_sha256": self.payload_sha256,
            "payload": base64.b64encode(self.payload).decode(),
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "applied_at": self.applied_at,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SlotConfig:
        payload = base64.b64decode(doc["payload"], validate=True)
        slot = cls(
            version=int(doc["version"]),
            bundle_digest=str(doc["bundle_digest"]),
            payload=payload,
            issued_at=int(doc["issued_at"]),
            expires_at=None if doc["expires_at"] is None else int(doc["expires_at"]),
            applied_at=float(doc["applied_at"]),
        )
        if slot.payload_sha256 != doc["payload_sha256"]:
            raise ValueError("payload does not match its payload_sha256")
        return slot


@dataclass(frozen=True, slots=True)
class Marker:
    version: int
    previous_version: int
    bundle_digest: str
    started_at: float


@dataclass(slots=True)
class FleetState:
    attempted_version: int = 0  # highest version that reached the apply step, committed or rolled back
    decided: OrderedDict[str, str] = field(default_factory=OrderedDict)  # bundle digest -> outcome code
    last: dict[str, Any] | None = None  # the last outcome, as reported
    expired_reported: int | None = None  # the running version whose expiry was reported

    def decide(self, digest: str, code: str) -> None:
        self.decided.pop(digest, None)
        self.decided[digest] = code
        while len(self.decided) > MAX_DECIDED:
            self.decided.popitem(last=False)


class Slots:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    # -- raw files ---------------------------------------------------------------------

    def _fsync_dir(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, name: str, data: bytes) -> None:
        """Replace ``name`` atomically and durably."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.folder / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.folder / name)
        self._fsync_dir()

    def read(self, name: str) -> bytes | None:
        try:
            return (self.folder / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("fleet: cannot read %s: %s; treated as absent", self.folder / name, exc.strerror or exc)
            return None

    def remove(self, *names: str) -> None:
        gone = False
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / name).unlink()
                gone = True
        if gone:
            self._fsync_dir()

    def _read_json(self, name: str) -> dict[str, Any] | None:
        data = self.read(name)
        if data is None:
            return None
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            log.error("fleet: %s is damaged (%s); treated as absent", self.folder / name, exc)
            return None
        return doc

    def _write_json(self, name: str, doc: dict[str, Any]) -> None:
        self.write(name, json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")

    # -- config slots ------------------------------------------------------------------

    def _slot(self, name: str) -> SlotConfig | None:
        doc = self._read_json(name)
        if doc is None:
            return None
        try:
            return SlotConfig.from_json(doc)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            log.error("fleet: %s is damaged (%s); treated as absent", self.folder / name, exc)
            return None

    def last_good(self) -> SlotConfig | None:
        return self._slot(LAST_GOOD)

    def candidate(self) -> SlotConfig | None:
        return self._slot(CANDIDATE)

    def write_candidate(self, slot: SlotConfig) -> None:
        self._write_json(CANDIDATE, slot.to_json())

    def commit_candidate(self) -> None:
        """last-good := candidate, by one rename: the commit point of an apply."""
        os.replace(self.folder / CANDIDATE, self.folder / LAST_GOOD)
        self._fsync_dir()

    # -- marker, trust, state ----------------------------------------------------------

    def marker(self) -> Marker | None:
        if self.read(MARKER) is None:
            return None
        # A marker that is there at all means an apply began, whatever a cut-short write left in it.
        doc = self._read_json(MARKER) or {}
        try:
            return Marker(
                int(doc["version"]), int(doc["previous_version"]), str(doc["bundle_digest"]), float(doc["started_at"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            log.error("fleet: %s is damaged (%s): an apply of unknown version was under way", self.folder / MARKER, exc)
            return Marker(0, 0, "", 0.0)

    def write_marker(self, marker: Marker) -> None:
        self._write_json(MARKER, asdict(marker))

    def trust(self) -> bytes | None:
        return self.read(TRUST)

    def write_trust(self, data: bytes) -> None:
        self.write(TRUST, data)

    def state(self) -> FleetState:
        doc = self._read_json(STATE) or {}
        try:
            return FleetState(
                attempted_version=int(doc.get("attempted_version", 0)),
                decided=OrderedDict((str(k), str(v)) for k, v in doc.get("decided", [])),
                last=doc.get("last"),
                expired_reported=doc.get("expired_reported"),
            )
        except (TypeError, ValueError) as exc:
            log.error("fleet: %s is damaged (%s); starting from an empty state", self.folder / STATE, exc)
            return FleetState()

    def write_state(self, state: FleetState) -> None:
        self._write_json(
            STATE,
            {
                "attempted_version": state.attempted_version,
                "decided": [[k, v] for k, v in state.decided.items()],
                "last": state.last,
                "expired_reported": state.expired_reported,
            },
        )
