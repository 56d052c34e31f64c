"""What every uplink kind shares, kept apart so that one kind never imports another.

An MQTT-only gateway must not load the HTTP uplink (and aiohttp's client) for a helper.
"""

from __future__ import annotations

from edgeagent.store import Batch


def idempotency_key(gateway_id: str, batch: Batch) -> str:
    """(gateway, buffer, first seq, last seq): the same batch sent twice has the same key."""
    return f"{gateway_id}:{batch.buffer_id}:{batch.first_seq}-{batch.last_seq}"
