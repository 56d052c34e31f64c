"""Serving the status page to a network it cannot trust: time, connections and log are bounded.

The page is reachable by anything on the cabinet's network, and aiohttp's defaults suit a
server behind a proxy: an idle connection lives an hour, any number are accepted, every
malformed request logs an ERROR with a traceback, and at the open-file limit asyncio
logs a traceback per failed ``accept()``, thousands a second (its accept loop goes on
after a failure). Measured: 1,100 half-open connections made 55.7 MB of log in 33 s. Here:

- a connection must deliver a complete request head within ``request_timeout_s`` of
  being opened or of its previous response, or it is closed. aiohttp's keep-alive timer
  does exactly this: it is armed when the connection opens and, when it fires, closes a
  connection still waiting for a complete request. A body is read for at most as long;
- at most ``max_connections`` are open at once; one more is closed as soon as it is
  accepted, so the agent keeps its file descriptors for its buses, store and uplinks;
- a malformed request is one short line; those lines, the refusals and failed
  ``accept()`` calls are each logged at once, then at most once a minute with a count.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
import sys
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from edgeagent.config import WebConfig
from edgeagent.errors import EdgeAgentError

log = logging.getLogger(__name__)

REPORT_EVERY_S = 60.0
SHORT_TEXT = 80
# What accept() fails with when the process or the system is out of descriptors or memory;
# asyncio's selector loop reports these to the loop's exception handler and retries.
_ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Throttled:
    """One repeating event's log line: the first at once, then at most one a window, with a count."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, logger: logging.Logger, level: int, window_s: float = REPORT_EVERY_S
    ) -> None:
        self._loop = loop
        self._logger = logger
        self._level = level
        self._window_s = window_s
        self._window_end = float("-inf")
        self._held = 0
        self._latest = ""
        self._timer: asyncio.TimerHandle | None = None

    def report(self, text: str, exc_info: BaseException | None = None) -> None:
        """Count one event; log it now if the window is quiet, else in the window's summary."""
        now = self._loop.time()
        if self._held == 0 and now >= self._window_end:
            self._logger.log(self._level, "%s", text, exc_info=exc_info)
            self._window_end = now + self._window_s
            return
        self._held += 1
        self._latest = text
        if self._timer is None:
            self._timer = self._loop.call_at(self._window_end, self._summarise)

    def _summarise(self) -> None:
        self._timer = None
        if self._held:
            self._logger.log(self._level, "%s (%d more in the last %.0f s)", self._latest, self._held, self._window_s)
            self._held = 0
        self._window_end = self._loop.time() + self._window_s

    def close(self) -> None:
        """Log what is still held back (a stop must not hide a count) and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
        self._summarise()


def _short(text: str) -> str:
    """One line of printable ASCII, at most SHORT_TEXT characters: safe to log whatever a client sent."""
    flat = " ".join(text.split())
    flat = "".join(c if " " <= c <= "~" else "?" for c in flat)
    return flat if len(flat) <= SHORT_TEXT else flat[: SHORT_TEXT - 3] + "..."


class _RequestErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger aiohttp's protocol reports request errors to.

    A request the parser rejects is the client's doing: one short line, no traceback.
    Anything else is a fault of ours (a handler raised): kept with its traceback. Both
    are throttled, since a client can provoke either as often as it likes.
    """

    def __init__(self, bad_requests: Throttled, failures: Throttled) -> None:
        super().__init__(log, {})
        self._bad = bad_requests
        self._failures = failures

    def log(self, level: int, msg: object, *args: object, exc_info: Any = None, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else (sys.exc_info()[1] if exc_info else None)
        if isinstance(exc, HttpProcessingError):
            remote = args[0] if args else "?"
            first = exc.message.strip().splitlines()[0].rstrip(":") if exc.message.strip() else type(exc).__name__
            self._bad.report(f"status page: bad request from {remote}: {_short(first)}")
        elif level >= logging.WARNING:
            text = str(msg) % args if args else str(msg)
            self._failures.report(f"status page: {_short(text)}", exc_info=exc)


class _Gate:
    """Counts the page's open connections and turns away those past the cap."""

    def __init__(self, limit: int, refusals: Throttled) -> None:
        self.limit = limit
        self.open = 0
        self._refusals = refusals

    def admit(self) -> bool:
        if self.open >= self.limit:
            self._refusals.report(f"status page: refusing connections past the limit of {self.limit} open")
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


class _CountedHandler(RequestHandler):
    """aiohttp's HTTP protocol, admitted by the gate when the connection is made.

    Deciding in ``connection_made`` rather than in the protocol factory counts exactly:
    asyncio calls ``connection_lost`` for every protocol that saw ``connection_made``.
    """

    __slots__ = ("_admitted", "_gate")

    def __init__(self, manager: web.Server, gate: _Gate, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gate = gate
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._gate.admit():
            transport.abort()
            return
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._gate.release()
        super().connection_lost(exc)


class _AcceptErrors:
    """The loop's exception handler while the page is served: failed accept() calls, throttled.

    asyncio's selector loop (``BaseSelectorEventLoop._accept_connection``) reports an
    accept() that fails for lack of descriptors or memory as "socket.accept() out of
    system resource", once per connection waiting, and retries a second later; the
    default handler logs each with a traceback. Everything else goes to the handler
    that was there before.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        self._throttled = Throttled(loop, log, logging.ERROR)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: MutableMapping[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _ACCEPT_RESOURCE_ERRNOS and "socket" in context:
            self._throttled.report(f"status page: cannot accept a connection: {exc.strerror}")
        elif self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def install(self) -> None:
        self._loop.set_exception_handler(self)

    def uninstall(self) -> None:
        if self._loop.get_exception_handler() is self:
            self._loop.set_exception_handler(self._previous)
        self._throttled.close()


class _Site(web.BaseSite):
    """A TCP site whose connections are made by our counted protocol (TCPSite always uses aiohttp's)."""

    __slots__ = ("_host", "_port", "_protocol", "handshake_timeout_s")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        protocol: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self.handshake_timeout_s = 60.0
        self._host = host
        self._port = port
        self._protocol = protocol

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            self._host,
            self._port,
            reuse_address=True,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self.handshake_timeout_s if self._ssl_context else None,
        )


async def serve_status_page(
    app: web.Application, cfg: WebConfig, *, shutdown_timeout_s: float, ssl_context: ssl.SSLContext | None = None
) -> web.AppRunner:
    """Serve ``app`` on ``cfg.host:cfg.port`` within the limits above (over TLS with ``ssl_context``).

    ``cleanup()`` the runner to stop. A TLS handshake must finish within ``request_timeout_s``.
    """
    loop = asyncio.get_running_loop()
    accept_errors = _AcceptErrors(loop)
    refusals = Throttled(loop, log, logging.WARNING)
    bad_requests = Throttled(loop, log, logging.INFO)
    failures = Throttled(loop, log, logging.ERROR)
    gate = _Gate(cfg.max_connections, refusals)
    request_log = _RequestErrorLog(bad_requests, failures)

    async def guarded(_: web.Application) -> AsyncIterator[None]:
        accept_errors.install()
        yield
        accept_errors.uninstall()
        for throttled in (refusals, bad_requests, failures):
            throttled.close()

    app.cleanup_ctx.append(guarded)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    server = runner.server
    assert server is not None
    handler_kwargs: dict[str, Any] = {
        "loop": loop,
        "keepalive_timeout": cfg.request_timeout_s,
        "lingering_time": cfg.request_timeout_s,
        "access_log": None,
        "logger": request_log,
    }
    site = _Site(runner, cfg.host, cfg.port, lambda: _CountedHandler(server, gate, **handler_kwargs), ssl_context)
    site.handshake_timeout_s = cfg.request_timeout_s
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise EdgeAgentError(f"cannot serve the status page on {cfg.host}:{cfg.port}: {exc.strerror}") from exc
    return runner
