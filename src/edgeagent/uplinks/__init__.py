"""Uplinks send one encoded batch and say whether it was acknowledged.

An uplink raises ``UplinkRetryLater`` or ``UplinkRejected`` (never a library error);
returning normally means the receiver acknowledged the batch and the cursor may move.
"""

from __future__ import annotations

from typing import Protocol

from edgeagent.store import Batch


class Uplink(Protocol):
    name: str
    target: str

    async def start(self) -> None: ...

    async def send(self, batch: Batch) -> None: ...

    async def close(self) -> None: ...
