"""The page's JSON API: what it reads, and the few things a technician may do from it.

Reads: the whole status, one device (its chart history, recent errors explained in
plain words, the last raw frames), the log, the audit trail, the session. Actions, each
audited and sent upstream as an event: re-poll a device now, write a point (technician
only: confirmed on the page, read back here), acknowledge an alarm, sync a destination now.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from aiohttp import web

from edgeagent.errors import DeviceError, EdgeAgentError, InvalidWrite
from edgeagent.web.app import PAGE_KEY, USER_KEY, client_of
from edgeagent.web.page import Page
from edgeagent.web.status import device_dict

HISTORY_S = 3600.0
ACTION_TIMEOUT_S = 30.0
MAX_VALUE_CHARS = 64


def _explain(reason: str, profile: str) -> str:
    """What a technician should check, for the reason a poll failed."""
    text = reason.lower()
    match = re.search(r"exception ([0-9a-f]{2})", text)
    if match:
        code = match.group(1)
        if code == "02":
            return (
                f"The device says a register it was asked for does not exist: the register map in the profile "
                f"'{profile}' does not match this device (model, firmware or address offset). Compare "
                f"drivers/{profile}.toml with the device's manual."
            )
        if code == "01":
            return f"The device does not support this kind of request: check the function codes in '{profile}'."
        if code == "03":
            return f"The device refused a value or a count it was sent: check the profile '{profile}'."
        if code in ("0a", "0b"):
            return (
                "The converter answered but cannot reach the device behind it: check the RS-485 wiring, "
                "the unit id and the baud rate on the converter's serial side."
            )
        return "The device answered with an error: check it is the model the profile describes, and its state."
    if "no answer" in text or "timed out" in text or "timeout" in text:
        return (
            "No answer in time: check the wiring (A and B swapped? termination?), the device's address "
            "(unit id) and its baud rate and parity."
        )
    if "cannot" in text or "unreachable" in text or "refused" in text or "lost" in text:
        return "The bus itself cannot be reached: check the converter's power and cable, its address and port."
    if "bad data" in text or "implausible" in text or "unknown unit code" in text:
        return f"The device answers with values that make no sense: check the profile '{profile}' (type, scale)."
    if text.startswith("fault:"):
        return "The device reports a fault of its own: inspect it on site."
    if "silent" in text or "stale" in text or "heard" in text:
        return "Nothing heard from it for too long: check its power or battery, and that it is in range."
    return "See the log for details."


def _page(request: web.Request) -> Page:
    return request.app[PAGE_KEY]


async def _status(request: web.Request) -> web.Response:
    return web.json_response(await _page(request).status()())


async def _session(request: web.Request) -> web.Response:
    user = request[USER_KEY]
    page = _page(request)
    return web.json_response(
        {"user": user.user, "role": user.role, "csrf": user.csrf, "tls_fingerprint": page.fingerprint}
    )


def _device_or_404(page: Page, device_id: str) -> Any:
    live = page.host.live.devices.get(device_id)
    if live is None:
        raise web.HTTPNotFound(text=f"no device {device_id!r}")
    return live


async def _device(request: web.Request) -> web.Response:
    page = _page(request)
    live = _device_or_404(page, request.match_info["id"])
    now = time.time()
    detail = device_dict(now, live, page.meta())
    detail["errors"] = [
        {"ts": ts, "reason": reason, "explained": _explain(reason, live.profile)} for ts, reason in live.errors
    ]
    if live.reason:
        detail["reason_explained"] = _explain(live.reason, live.profile)
    detail["frames"] = [{"ts": ts, "dir": d, "hex": h} for ts, d, h in live.frames]
    detail["history"] = page.history.of_device(live.id, now - HISTORY_S)
    detail["repoll"] = hasattr(page.host.runners.get(live.id), "poll_now")
    return web.json_response(detail)


async def _logs(request: web.Request) -> web.Response:
    q = request.query
    lines = _page(request).recent_log.query(q.get("level", "INFO"), q.get("device", ""), int(q.get("limit", "200")))
    return web.json_response({"lines": lines})


async def _audit(request: web.Request) -> web.Response:
    page = _page(request)
    assert page.sessions is not None
    return web.json_response({"entries": await page.sessions.recent_audit()})


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="a JSON object is expected") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="a JSON object is expected")
    return body


def _need_technician(request: web.Request) -> None:
    if request[USER_KEY].role != "technician":
        raise web.HTTPForbidden(text="this needs the technician role")


def _done(page: Page, request: web.Request, action: str, target: str, result: str, **extra: Any) -> web.Response:
    page.audit(request[USER_KEY].user, client_of(request), action, target, result)
    return web.json_response({"result": result, **extra})


async def _repoll(request: web.Request) -> web.Response:
    page = _page(request)
    live = _device_or_404(page, request.match_info["id"])
    runner = page.host.runners.get(live.id)
    if not hasattr(runner, "poll_now"):
        return _done(page, request, "repoll", live.id, "refused: this device reports by itself; it is not polled")
    try:
        async with asyncio.timeout(ACTION_TIMEOUT_S):
            failure = await runner.poll_now(live.id)
    except (TimeoutError, EdgeAgentError) as exc:
        failure = str(exc) or "no poll within 30 s"
    result = "ok: answered" if failure is None else f"failed: {failure}"
    return _done(page, request, "repoll", live.id, result, device=device_dict(time.time(), live, page.meta()))


async def _write(request: web.Request) -> web.Response:
    _need_technician(request)
    page = _page(request)
    live = _device_or_404(page, request.match_info["id"])
    body = await _json_body(request)
    point, value = str(body.get("point", "")), body.get("value")
    if not isinstance(value, int | float | str) or isinstance(value, bool) or len(str(value)) > MAX_VALUE_CHARS:
        raise web.HTTPBadRequest(text="value: a number or a short text")
    target = f"{live.id}.{point}"
    try:
        async with asyncio.timeout(ACTION_TIMEOUT_S):
            shown = await page.host.write_point(live.id, point, value)
            runner = page.host.runners.get(live.id)
            failure = await runner.poll_now(live.id) if hasattr(runner, "poll_now") else "not read back"
    except InvalidWrite as exc:
        return _done(page, request, "write", target, f"refused: {exc}")
    except (DeviceError, EdgeAgentError, TimeoutError) as exc:
        return _done(page, request, "write", target, f"failed: {exc or 'no answer within 30 s'}")
    pv = live.points.get(point)
    back = None if pv is None or failure is not None else device_dict(time.time(), live, page.meta())
    read_back = next((p for p in (back or {}).get("points", []) if p["name"] == point), None)
    result = f"ok: wrote {shown}" + ("" if read_back else f"; not read back ({failure})")
    return _done(page, request, "write", target, result, read_back=read_back)


async def _ack(request: web.Request) -> web.Response:
    _need_technician(request)
    page = _page(request)
    body = await _json_body(request)
    source, kind = str(body.get("source", "")), str(body.get("kind", ""))
    alarm = page.host.live.alarms.acknowledge(source, kind, request[USER_KEY].user)
    result = "ok" if alarm is not None else "refused: no such alarm"
    return _done(page, request, "acknowledge", f"{source}/{kind}", result)


async def _sync(request: web.Request) -> web.Response:
    _need_technician(request)
    page = _page(request)
    name = request.match_info["name"]
    unit = page.host.units.get(f"uplink:{name}")
    worker = getattr(unit, "worker", None)
    wake = getattr(worker, "_wake", None)  # the worker's own "there is data" event
    if not isinstance(wake, asyncio.Event):
        return _done(page, request, "sync_now", name, "refused: no such destination running")
    wake.set()
    return _done(page, request, "sync_now", name, "ok: the worker reads its backlog now (a backoff wait still runs)")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/status", _status)
    app.router.add_get("/api/session", _session)
    app.router.add_get("/api/devices/{id}", _device)
    app.router.add_get("/api/logs", _logs)
    app.router.add_get("/api/audit", _audit)
    app.router.add_post("/api/devices/{id}/repoll", _repoll)
    app.router.add_post("/api/devices/{id}/write", _write)
    app.router.add_post("/api/alarms/ack", _ack)
    app.router.add_post("/api/uplinks/{name}/sync", _sync)
