"""aiohttp app for the status page: it reads the live picture and store stats, nothing more."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable, Collection
from importlib import resources
from typing import Any

from aiohttp import hdrs, web

from edgeagent import __version__
from edgeagent.clock import clock_state
from edgeagent.live import Live
from edgeagent.reload import ConfigState
from edgeagent.store import Store

StatusFn = Callable[[], Awaitable[dict[str, Any]]]
STATUS_KEY = web.AppKey("status", StatusFn)  # type: ignore[type-abstract]
ALLOWED_HOSTS_KEY = web.AppKey("allowed_hosts", frozenset[str])

_STATIC = resources.files("edgeagent.web") / "static"
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _age(now: float, ts: float | None) -> float | None:
    return None if ts is None else round(max(0.0, now - ts), 1)


def _damage(store: Store) -> dict[str, Any] | None:
    d = store.damage
    if d is None:
        return None
    return {
        "kind": d.kind,
        "detail": d.detail,
        "moved_aside": d.moved_aside,
        "old_buffer_id": d.old_buffer_id,
        "salvaged": d.salvaged,
        "lost_at_most": d.lost_at_most,
    }


def status_builder(live: Live, store: Store, config: ConfigState | None = None) -> StatusFn:
    """The function behind ``/api/status`` (and the page, which renders the same JSON)."""

    async def build() -> dict[str, Any]:
        now = time.time()
        stats = await store.stats()
        oldest_all = [t for t in stats.oldest_unsent_ts.values() if t is not None]
        devices = []
        for d in live.devices.values():
            devices.append(
                {
                    "id": d.id,
                    "profile": d.profile,
                    "bus": d.bus,
                    "state": d.state.value,
                    "reason": d.reason,
                    "state_since": d.state_since,
                    "last_ok_age_s": _age(now, d.last_ok_ts),
                    "polls_ok": d.polls_ok,
                    "polls_failed": d.polls_failed,
                    "protocol": d.protocol,
                    "address": d.address,
                    "framing_errors": d.framing_errors,
                    "rejected": d.rejected,
                    "replayed": d.replayed,
                    "rssi_dbm": d.rssi_dbm,
                    "asset": d.asset,
                    "points": [
                        {
                            "name": name,
                            "value": pv.value,
                            "unit": pv.unit,
                            "ts": pv.ts,
                            "age_s": _age(now, pv.ts),
                            "quality": pv.quality.name.lower(),
                            "label": pv.label,
                        }
                        for name, pv in d.points.items()
                    ],
                }
            )
        uplinks = []
        for u in live.uplinks.values():
            uplinks.append(
                {
                    "name": u.name,
                    "kind": u.kind,
                    "target": u.target,
                    "last_result": u.last_result,
                    "last_attempt_age_s": _age(now, u.last_attempt_ts),
                    "last_success_age_s": _age(now, u.last_success_ts),
                    "batches_sent": u.batches_sent,
                    "readings_sent": u.readings_sent,
                    "failures": u.failures,
                    "unsent": stats.unsent.get(u.name, 0),
                    "oldest_unsent_age_s": _age(now, stats.oldest_unsent_ts.get(u.name)),
                }
            )
        return {
            "gateway": {
                "id": live.gateway_id,
                "version": __version__,
                "uptime_s": round(live.uptime_s, 1),
                "clock": clock_state().as_dict(),
                "config": config.as_dict() if config is not None else None,
            },
            "devices": devices,
            "buses": [
                {
                    "name": b.name,
                    "kind": b.kind,
                    "target": b.target,
                    "state": b.state,
                    "detail": b.detail,
                    "state_since": b.state_since,
                    "transactions": b.transactions,
                    "restarts": b.restarts,
                }
                for b in live.buses.values()
            ],
            "store": {
                "file_bytes": stats.file_bytes,
                "last_seq": stats.last_seq,
                "pending_commit": stats.pending_commit,
                "committed_total": stats.committed_total,
                "backlog": max(stats.unsent.values(), default=0),
                "oldest_unsent_age_s": _age(now, min(oldest_all)) if oldest_all else None,
                "class_bytes": stats.class_bytes,
                "dropped": stats.dropped,
                "last_error": stats.last_error,
                "buffer_id": stats.buffer_id,
                "produced_total": stats.produced_total,
                "salvage": stats.salvage,
                "damage": _damage(store),
            },
            "uplinks": uplinks,
            "alarms": live.alarms.as_list(),
        }

    return build


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    for key, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response


def host_allowed(host: str, allowed_hosts: Collection[str]) -> bool:
    """Whether a ``Host`` header names this gateway: an IP literal, localhost or a configured name.

    A DNS-rebinding page reaches us under its own name, so any other name is refused;
    an address, whichever of ours it is, cannot be rebound. A port, if any, is ignored.
    """
    if host.startswith("["):  # [IPv6] or [IPv6]:port
        literal, sep, rest = host[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return False
        return _is_ip(literal) and ":" in literal
    name, sep, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    if sep and not port.isdigit():
        return False
    if _is_ip(name):
        return True
    name = name.lower().removesuffix(".")
    return name == "localhost" or name in allowed_hosts


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@web.middleware
async def _known_host(request: web.Request, handler: Any) -> web.StreamResponse:
    host = request.headers.get(hdrs.HOST)
    # No Host header at all is no browser's request, so no rebinding: let it through.
    if host is not None and not host_allowed(host, request.app[ALLOWED_HOSTS_KEY]):
        return web.Response(
            status=421,
            text="421 Misdirected Request: this gateway does not answer to that host name "
            "(an address works; names go in [web] allowed_hosts)\n",
        )
    response: web.StreamResponse = await handler(request)
    return response


async def _index(request: web.Request) -> web.Response:
    return web.Response(text=(_STATIC / "index.html").read_text(), content_type="text/html")


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    types = {"status.js": "application/javascript", "status.css": "text/css"}
    if name not in types:
        raise web.HTTPNotFound()
    return web.Response(text=(_STATIC / name).read_text(), content_type=types[name])


async def _api_status(request: web.Request) -> web.Response:
    return web.json_response(await request.app[STATUS_KEY]())


def make_app(status: StatusFn, allowed_hosts: Collection[str] = ()) -> web.Application:
    """The status page; ``allowed_hosts`` are the names (besides addresses and localhost) it answers to."""
    app = web.Application(middlewares=[_headers, _known_host])
    app[STATUS_KEY] = status
    app[ALLOWED_HOSTS_KEY] = frozenset(h.lower().removesuffix(".") for h in allowed_hosts)
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name}", _asset)
    app.router.add_get("/api/status", _api_status)
    return app
