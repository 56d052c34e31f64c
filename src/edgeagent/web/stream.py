"""The page's live feed: server-sent events from the hub, with a heartbeat.

Each browser gets its own bounded hub queue that keeps only the newest entry per device,
bus, destination and alarm (``QUEUE_LEN`` at most), so a phone on a weak link falls
behind by skipping stale values and can never slow a bus; and it is read at most every
``COALESCE_S``, so a fast device costs one event per half second, not one per poll. Events carry the whole new
state of what changed (a device with its points, a bus, a destination, the alarm
list), not a diff, so a skipped one loses nothing. A heartbeat goes out every
``HEARTBEAT_S`` when nothing else does: the page counts silence longer than its
limit as the agent being unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Hashable
from typing import Any

from aiohttp import web

from edgeagent.hub import AlarmTransition, BusStateChange, Topic, UplinkResult
from edgeagent.web.app import PAGE_KEY
from edgeagent.web.page import Page
from edgeagent.web.status import device_dict

HEARTBEAT_S = 3.0
COALESCE_S = 0.5
RETRY_MS = 2000
QUEUE_LEN = 256
MAX_STREAMS = 16  # browsers streaming at once; the connection cap bounds everything else


def _key(entry: Any) -> Hashable:
    if isinstance(entry, BusStateChange):
        return entry.bus
    if isinstance(entry, UplinkResult):
        return entry.uplink
    if isinstance(entry, AlarmTransition):
        return "alarms"
    return str(entry.device)


def _event(page: Page, topic: Topic, entry: Any, meta: dict[tuple[str, str], dict[str, Any]]) -> bytes | None:
    live = page.host.live
    now = time.time()
    if topic in (Topic.READINGS, Topic.DEVICE_STATE):
        device = live.devices.get(entry.device)
        if device is None:
            return None
        name, data = "device", device_dict(now, device, meta)
    elif topic == Topic.BUS_STATE:
        bus = live.buses.get(entry.bus)
        if bus is None:
            return None
        name = "bus"
        data = {"name": bus.name, "state": bus.state, "detail": bus.detail, "state_since": bus.state_since}
    elif topic == Topic.UPLINK_RESULT:
        up = live.uplinks.get(entry.uplink)
        if up is None:
            return None
        name = "uplink"
        data = {"name": up.name, "last_result": up.last_result, "ok": entry.ok, "readings_sent": up.readings_sent}
    else:
        name, data = "alarms", {"alarms": live.alarms.as_list()}
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def handler(request: web.Request) -> web.StreamResponse:
    page = request.app[PAGE_KEY]
    if page.streams >= MAX_STREAMS:
        return web.json_response({"error": "too many live streams open"}, status=503)
    sub = page.host.hub.queue(
        Topic.READINGS,
        Topic.DEVICE_STATE,
        Topic.BUS_STATE,
        Topic.ALARM,
        Topic.UPLINK_RESULT,
        maxlen=QUEUE_LEN,
        key=_key,
    )
    page.streams += 1
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    try:
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\nevent: hello\ndata: {time.time():.3f}\n\n".encode())
        meta = page.meta()
        while True:
            try:
                async with asyncio.timeout(HEARTBEAT_S):
                    first = await sub.get()
            except TimeoutError:
                await response.write(f"event: heartbeat\ndata: {time.time():.3f}\n\n".encode())
                continue
            # A device polled ten times a second is shown at most every COALESCE_S: meanwhile
            # its newer entries replace older ones in the queue, and one event says it all.
            await asyncio.sleep(COALESCE_S)
            latest = {(first[0], _key(first[1])): first}
            for _ in range(len(sub)):
                topic, entry = await sub.get()
                latest[(topic, _key(entry))] = (topic, entry)
            chunk = b"".join(filter(None, (_event(page, t, e, meta) for t, e in latest.values())))
            if chunk:
                await response.write(chunk)
    except (ConnectionResetError, ConnectionError):
        pass  # the browser went away
    finally:
        page.streams -= 1
        page.stream_dropped += sub.dropped
        with contextlib.suppress(ValueError):  # the hub was replaced under us
            sub.close()
    return response
