"""Uplinks send one encoded batch and say whether it was acknowledged.

An uplink raises ``UplinkRetryLater`` or ``UplinkRejected`` (never a library error);
returning normally means the receiver acknowledged the batch and the cursor may move.
A failure that means the link itself is down (refused, unreachable, disconnected) is
raised with ``link_down=True``; the sync worker then waits on ``link_up()`` instead of
a timer, so sending resumes the moment the link is back.

Built-in uplinks register here by ``kind`` exactly as a site-specific one would.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from edgeagent.config import UplinkConfig
from edgeagent.store import Batch


class Uplink(Protocol):
    name: str
    target: str  # shown on the status page; never carries credentials

    async def start(self) -> None: ...

    async def send(self, batch: Batch, payload: bytes) -> None:
        """Deliver ``payload`` (the batch as gzip'd SenML); return only once acknowledged."""

    async def link_up(self) -> None:
        """Return once the link is believed to be back (after a ``link_down`` failure)."""

    async def close(self) -> None: ...


# kind -> "module:class"; imported on use, so an unused uplink costs nothing at start.
REGISTRY: dict[str, str] = {
    "http": "edgeagent.uplinks.http:HttpUplink",
    "mqtt": "edgeagent.uplinks.mqtt:MqttUplink",
}


def make_uplink(cfg: UplinkConfig, gateway_id: str) -> Uplink:
    module_name, _, class_name = REGISTRY[cfg.kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    uplink: Uplink = cls(cfg, gateway_id)
    return uplink
