"""Where a fleet decision goes: the log, the store (event priority), the status page, the retained topic.

The store path survives being offline: the gateway's own event readings go upstream
with everything else (docs/uplinks.md names them):

    <gw>/gateway/fleet_config    vs "applied" | "rejected: <code>" | "rolled_back: <code>"
    <gw>/gateway/fleet_trust     vs "applied" | "rejected: <code>"
    <gw>/gateway/config_expired  vs the running version

each with the reason ``version 13 (running 12): <why>``. The retained
``<prefix>/<gateway>/config/reported`` message (published by the MQTT channel) holds the
gateway's standing as JSON, so a fleet tool can read every gateway without a database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from edgeagent import __version__
from edgeagent.fleet.bundle import APPLIED

log = logging.getLogger("edgeagent.fleet")

APPLYING = "applying"
EXPIRED_OUTCOME = "expired"
POINTS = {"config": "fleet_config", "bundle": "fleet_config", "trust": "fleet_trust"}


class Reporter:
    def __init__(
        self,
        gateway: str,
        groups: list[str],
        store_event: Callable[[str, str, str], None],
        status: Callable[[dict[str, Any]], None],
    ) -> None:
        self.gateway = gateway
        self.groups = list(groups)
        self._store_event = store_event
        self._status = status
        self.listeners: list[Callable[[dict[str, Any]], None]] = []  # the MQTT channel's retained publish
        self.channels: dict[str, str] = {}
        self.standing: dict[str, Any] = {}
        self._applying: dict[str, Any] | None = None

    def outcome(
        self, kind: str, outcome: str, code: str | None, version: int | None, previous: int, reason: str
    ) -> dict[str, Any]:
        """A decision: logged, stored as an event, and returned as the ``last`` of the standing."""
        self._applying = None
        value = outcome if code is None else f"{outcome}: {code}"
        label = "epoch" if kind == "trust" else "version"
        what = f"{kind} {label} {version}" if version is not None else "a bundle"
        text = f"{label} {version} (running {previous}): {reason}" if version is not None else reason
        level = logging.INFO if outcome == APPLIED else logging.ERROR
        log.log(level, "fleet: %s %s: %s", what, value, reason)
        self._store_event(POINTS.get(kind, "fleet_config"), value, text)
        return {
            "kind": kind,
            "outcome": outcome,
            "code": code,
            "version": version,
            "previous_version": previous,
            "reason": reason,
            "ts": time.time(),
        }

    def applying(self, version: int, previous: int) -> None:
        """Under way (health window): on the status page and the retained topic, not in the store."""
        self._applying = {
            "kind": "config",
            "outcome": APPLYING,
            "code": None,
            "version": version,
            "previous_version": previous,
            "reason": "in the health window",
            "ts": time.time(),
        }
        self._emit()

    def expired(self, version: int, reason: str) -> None:
        self._store_event("config_expired", str(version), reason)
        self.standing["expired"] = {"version": version, "reason": reason, "ts": time.time()}
        self._emit()

    def publish(self, standing: dict[str, Any]) -> None:
        self.standing.update(standing)
        self._emit()

    def channel(self, name: str, state: str) -> None:
        if self.channels.get(name) != state:
            self.channels[name] = state
            self._status(self.document(with_channels=True))

    def document(self, *, with_channels: bool = False) -> dict[str, Any]:
        """The gateway's standing as a fleet tool reads it (the retained ``config/reported``)."""
        doc: dict[str, Any] = {
            "gateway": self.gateway,
            "groups": self.groups,
            "running_version": self.standing.get("running_version", 0),
            "epoch": self.standing.get("epoch"),
            "last": self._applying or self.standing.get("last"),
            "expired": self.standing.get("expired"),
            "agent_version": __version__,
            "ts": time.time(),
        }
        if with_channels:
            doc["channels"] = dict(self.channels)
        return doc

    def _emit(self) -> None:
        self._status(self.document(with_channels=True))
        doc = self.document()
        for listener in self.listeners:
            listener(doc)
