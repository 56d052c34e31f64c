"""The status page's aiohttp app: routes, and the doors every request goes through.

In order, each request meets: the security headers; the Host check (DNS rebinding);
then the login door. Only ``/healthz``, the login page and the static files are open.
Everything else needs a session (a cookie from a login) or, for reading the API and
``/metrics``, the bearer token from ``api_token_file``. A request that changes anything
(log in, log out, acknowledge, re-poll, write, sync now) must also come from this
page: an ``Origin`` header naming this very page and the session's CSRF token (at
login, the token the login form carried, matched against its cookie).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import ipaddress
import logging
import re
from collections.abc import Collection
from importlib import resources
from typing import Any

from aiohttp import hdrs, web

from edgeagent.web.auth import USER_NAME, new_secret, password_stamp, verify_password
from edgeagent.web.page import Page
from edgeagent.web.sessions import Session

log = logging.getLogger(__name__)

PAGE_KEY = web.AppKey("page", Page)
ALLOWED_HOSTS_KEY = web.AppKey("allowed_hosts", frozenset[str])
SESSION_COOKIE = "edgeagent_session"
LOGIN_COOKIE = "edgeagent_login"
CSRF_HEADER = "X-CSRF-Token"
MAX_LOGIN_BODY = 4096
# Open doors: the health probe, the login page and the page's own files.
_OPEN = ("/healthz", "/login", "/static/")
# Compared against when a user name is unknown, so that a wrong name costs as long as a wrong password.
_DUMMY_HASH = "$scrypt$ln=14,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43

_STATIC = resources.files("edgeagent.web") / "static"
STATIC_TYPES = {
    ".js": "application/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    # "no-referrer" would make a browser send "Origin: null" with the login form; nothing leaves the page.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
USER_KEY = web.RequestKey("user", Session)


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        _decorate(request, exc)
        raise
    _decorate(request, response)
    return response


def _decorate(request: web.Request, response: web.StreamResponse) -> None:
    for key, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    if request.app[PAGE_KEY].tls:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")


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


def client_of(request: web.Request) -> str:
    return request.remote or "?"


def _same_origin(request: web.Request) -> bool:
    """The request's ``Origin`` names this page (scheme and host as the browser reached it)."""
    origin = request.headers.get(hdrs.ORIGIN)
    host = request.headers.get(hdrs.HOST)
    if not origin or not host:
        return False
    scheme = "https" if request.app[PAGE_KEY].tls else "http"
    return origin.lower() == f"{scheme}://{host}".lower()


def _bearer_ok(request: web.Request, page: Page) -> bool:
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or page.api_token is None:
        return False
    return hmac.compare_digest(token.strip().encode(), page.api_token.encode())


def _refuse(request: web.Request, status: int, text: str) -> web.StreamResponse:
    if status == 401 and request.path == "/" and request.method == "GET":
        raise web.HTTPSeeOther("/login")  # a person: to the login page
    if request.path.startswith(("/api/", "/metrics", "/logout")):
        return web.json_response({"error": text}, status=status)
    return web.Response(status=status, text=f"{status}: {text}\n")


@web.middleware
async def _login_door(request: web.Request, handler: Any) -> web.StreamResponse:
    page = request.app[PAGE_KEY]
    path = request.path
    if path == "/healthz" or path.startswith("/static/") or path == "/login":
        response: web.StreamResponse = await handler(request)
        return response
    if path == "/metrics" and page.cfg.metrics_auth == "none":
        return await handler(request)  # type: ignore[no-any-return]
    assert page.sessions is not None
    session_id = request.cookies.get(SESSION_COOKIE)
    session = page.sessions.get(session_id)
    if session is not None and session_id:
        user = page.session_user(session)
        if user is None:  # removed, or a new password since this login
            page.sessions.drop(session_id)
            session = None
        else:
            session.role = user.role  # a role changed with `edgeagent passwd --role` counts at once
    if session is None:
        # A machine reads with the token; it never changes anything.
        if request.method in ("GET", "HEAD") and _bearer_ok(request, page):
            request[USER_KEY] = Session("api-token", "viewer", "", 0.0, 0.0)
            return await handler(request)  # type: ignore[no-any-return]
        return _refuse(request, 401, "log in first")
    if request.method not in ("GET", "HEAD"):
        token = request.headers.get(CSRF_HEADER, "")
        if not _same_origin(request) or not hmac.compare_digest(token.encode(), session.csrf.encode()):
            log.warning(
                "refused a %s %s from %s: no matching Origin or CSRF token", request.method, path, client_of(request)
            )
            return _refuse(request, 403, "refused: this request did not come from the page")
    request[USER_KEY] = session
    return await handler(request)  # type: ignore[no-any-return]


# -- login ---------------------------------------------------------------------------


def _login_html(page: Page, *, csrf: str, error: str = "", user: str = "") -> str:
    no_users = not page.users()
    rows = []
    if page.fingerprint:
        rows.append(
            '<p class="fingerprint">Certificate SHA-256 (compare with the label on the cabinet):<br>'
            f"<code>{html.escape(page.fingerprint)}</code></p>"
        )
    if no_users:
        command = f"edgeagent passwd --config {page.host_config_path()} NAME --role technician"
        rows.append(
            '<p class="problem" id="no-users">No user can log in yet. On the gateway, as the service user, run:'
            f"<br><code>{html.escape(command)}</code></p>"
        )
    if error:
        rows.append(f'<p class="problem" id="login-error" role="alert">{html.escape(error)}</p>')
    disabled = " disabled" if no_users else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgeagent · log in</title><link rel="stylesheet" href="/static/app.css"></head>
<body class="login"><main>
<h1>edgeagent <span>{html.escape(page.host.site.gateway.id)}</span></h1>
{"".join(rows)}
<form method="post" action="/login">
<input type="hidden" name="csrf" value="{html.escape(csrf)}">
<label>User <input name="user" autocomplete="username" autocapitalize="none" required
 value="{html.escape(user)}"{disabled}></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required{disabled}></label>
<button type="submit"{disabled}>Log in</button>
</form></main></body></html>
"""


def _login_page(page: Page, status: int = 200, *, request: web.Request, **kwargs: str) -> web.Response:
    # One token per browser until it logs in: a second tab (or a favicon fetch) must not void the first form.
    csrf = request.cookies.get(LOGIN_COOKIE, "")
    if not re.fullmatch(r"[A-Za-z0-9_-]{43}", csrf):
        csrf = new_secret()
    response = web.Response(text=_login_html(page, csrf=csrf, **kwargs), content_type="text/html", status=status)
    response.set_cookie(LOGIN_COOKIE, csrf, httponly=True, samesite="Strict", path="/", secure=page.tls)
    return response


async def _login_get(request: web.Request) -> web.StreamResponse:
    return _login_page(request.app[PAGE_KEY], request=request)


async def _login_post(request: web.Request) -> web.StreamResponse:
    page = request.app[PAGE_KEY]
    assert page.sessions is not None and page.throttle is not None
    client = client_of(request)
    if request.content_length is not None and request.content_length > MAX_LOGIN_BODY:
        return web.Response(status=413, text="413: too large\n")
    form = await request.post()
    name = str(form.get("user", ""))[:64]
    password = str(form.get("password", ""))
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    sent = str(form.get("csrf", ""))
    if not _same_origin(request) or not cookie or not hmac.compare_digest(sent.encode(), cookie.encode()):
        log.warning("refused a login from %s: no matching Origin or CSRF token", client)
        return _login_page(page, 403, request=request, error="This login form has expired: try again.")
    keys = (f"client:{client}", f"user:{name.lower()}")
    wait = page.throttle.wait_s(*keys)
    if wait > 0:
        log.warning("login for %r from %s refused: too many failures, %.0f s to wait", name, client, wait)
        page.audit(name or "-", client, "login", name, "refused: too many failures")
        response = _login_page(
            page, 429, request=request, error=f"Too many failed logins. Try again in {wait:.0f} s.", user=name
        )
        response.headers["Retry-After"] = str(int(wait + 0.999))
        return response
    user = page.users().get(name) if USER_NAME.match(name) else None
    ok = await asyncio.to_thread(verify_password, password, user.hash if user else _DUMMY_HASH)
    if user is None or not ok:
        page.throttle.failed(*keys)
        log.warning("failed login for %r from %s", name, client)
        page.audit(name or "-", client, "login", name, "failed")
        return _login_page(page, 401, request=request, error="Wrong user name or password.", user=name)
    page.throttle.succeeded(keys[1])
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        page.sessions.drop(old)
    session_id, _ = page.sessions.create(user.name, user.role, password_stamp(user))
    page.audit(user.name, client, "login", user.name, "ok")
    redirect = web.HTTPSeeOther("/")
    redirect.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="Strict", path="/", secure=page.tls)
    redirect.del_cookie(LOGIN_COOKIE, path="/")
    raise redirect


async def _logout(request: web.Request) -> web.StreamResponse:
    page = request.app[PAGE_KEY]
    assert page.sessions is not None
    session_id = request.cookies.get(SESSION_COOKIE, "")
    user = request[USER_KEY]
    page.sessions.drop(session_id)
    page.audit(user.user, client_of(request), "logout", user.user, "ok")
    response = web.json_response({"ok": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


# -- files ---------------------------------------------------------------------------


async def _index(request: web.Request) -> web.Response:
    return web.Response(text=(_STATIC / "index.html").read_text(), content_type="text/html")


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    kind = STATIC_TYPES.get("." + name.rpartition(".")[2]) if "." in name else None
    if kind is None or "/" in name or name.startswith(".") or not (_STATIC / name).is_file():
        raise web.HTTPNotFound()
    response = web.Response(body=(_STATIC / name).read_bytes(), content_type=kind)
    response.headers["Cache-Control"] = "max-age=3600"
    response.enable_compression()  # gzip when the browser takes it: uPlot is 51 KB, 22 KB gzipped
    return response


async def _healthz(request: web.Request) -> web.Response:
    """200 while every critical part checks in, 503 otherwise: nothing more (no login, no details)."""
    if request.app[PAGE_KEY].healthy():
        return web.Response(text="ok\n")
    return web.Response(status=503, text="unhealthy\n")


def make_app(page: Page, allowed_hosts: Collection[str] = ()) -> web.Application:
    """The status page; ``allowed_hosts`` are the names (besides addresses and localhost) it answers to."""
    from edgeagent.web import api, metrics, stream

    app = web.Application(middlewares=[_headers, _known_host, _login_door], client_max_size=64 * 1024)
    app[PAGE_KEY] = page
    app[ALLOWED_HOSTS_KEY] = frozenset(h.lower().removesuffix(".") for h in allowed_hosts)
    app.router.add_get("/", _index)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/login", _login_get)
    app.router.add_post("/login", _login_post)
    app.router.add_post("/logout", _logout)
    app.router.add_get("/static/{name}", _asset)
    app.router.add_get("/metrics", metrics.handler)
    app.router.add_get("/api/events", stream.handler)
    api.add_routes(app)
    return app
