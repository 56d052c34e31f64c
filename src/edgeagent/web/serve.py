"""Starting the technician's page for the agent: TLS decided, the page's parts built, the site opened."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from edgeagent.preflight import web_api_token
from edgeagent.web.app import make_app
from edgeagent.web.page import Page, PageHost
from edgeagent.web.server import serve_status_page
from edgeagent.web.tls import ensure_certificate, plain_off_loopback, server_context, wants_tls

log = logging.getLogger(__name__)


async def serve_page(host: PageHost, *, shutdown_timeout_s: float) -> tuple[web.AppRunner, str]:
    """Serve the page for ``host`` (the agent); return the runner (``cleanup()`` stops it) and the page's URL."""
    site = host.site
    cfg = site.web
    state_dir = site.gateway.state_dir
    tls = wants_tls(cfg)
    ssl_context = None
    if tls:
        cert, key = ensure_certificate(cfg, state_dir, site.gateway.id)
        ssl_context = server_context(cert, key)
    elif plain_off_loopback(cfg):
        log.warning(
            "the status page serves plain HTTP on %s (plain_http_off_loopback = true): passwords and session "
            "cookies cross the network readable by anyone on it",
            cfg.host,
        )
    page = Page(host, state_dir, tls, api_token=web_api_token(site))
    if not page.users():
        log.warning(
            "no user can log in to the status page yet: run `edgeagent passwd --config %s NAME --role technician`",
            page.host_config_path(),
        )
    app = make_app(page, allowed_hosts=cfg.allowed_hosts)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await page.start()
        yield
        await page.stop()

    app.cleanup_ctx.append(lifecycle)
    runner = await serve_status_page(app, cfg, shutdown_timeout_s=shutdown_timeout_s, ssl_context=ssl_context)
    address, port = runner.addresses[0][:2]
    shown = f"[{address}]" if ":" in address else address
    return runner, f"{'https' if tls else 'http'}://{shown}:{port}/"
