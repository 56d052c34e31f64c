"""HTTP(S) uplink: POSTs gzip'd SenML batches to an ingest endpoint with aiohttp.

Only a 2xx acknowledges a batch. 5xx, 408, 429 (with its Retry-After), timeouts,
refused and reset connections are transient. Any other 4xx means the receiver refuses
the batch as it is: it is reported once with the receiver's body and retried slowly,
never dropped, because a fix on the receiving side must still find the data here.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import time
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from edgeagent.clock import plausible
from edgeagent.config import HttpUplinkConfig
from edgeagent.errors import UplinkRejected, UplinkRetryLater
from edgeagent.preflight import read_secret
from edgeagent.store import Batch
from edgeagent.sync.senml import CONTENT_TYPE
from edgeagent.uplinks.common import idempotency_key

# A receiver's Retry-After is honoured up to this: data (alarms too) never waits longer on its word.
MAX_RETRY_AFTER_S = 600.0
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 3.0
MAX_ERROR_BODY_CHARS = 500


def parse_retry_after(value: str | None, date: str | None = None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), capped.

    An HTTP date is read against the response's own ``Date`` header, not the local clock:
    a gateway that booted in 1970 would otherwise wait the cap (or far longer) for a
    receiver that asked for five seconds. Without a ``Date``, the local clock is used
    only when it is plausible; otherwise the caller's own backoff applies (None).
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    when = _http_date(value)
    if when is None:
        return None
    base = _http_date(date) if date else None
    if base is None:
        local = time.time() if now is None else now
        if not plausible(local):
            return None
        base = local
    return min(max(when - base, 0.0), MAX_RETRY_AFTER_S)


def _http_date(text: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def redact_url(url: str) -> str:
    """A URL without user info or query, so credentials never reach a page or a log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class HttpUplink:
    def __init__(self, cfg: HttpUplinkConfig, gateway_id: str) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._url = str(cfg.url)
        self.target = redact_url(self._url)
        self._host = cfg.url.host or "localhost"
        self._port = cfg.url.port or (443 if cfg.url.scheme == "https" else 80)
        self.gateway_id = gateway_id
        self._session: aiohttp.ClientSession | None = None
        self._auth: str | None = None

    async def start(self) -> None:
        if self.cfg.token_file is not None:
            # Checked by preflight before start; read again here, so a change since is refused the same way.
            self._auth = f"Bearer {await asyncio.to_thread(read_secret, self.cfg, 'token_file')}"
        self._session = self._new_session()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _new_session(self) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s, sock_connect=min(self.cfg.timeout_s, 10))
        return aiohttp.ClientSession(timeout=timeout, raise_for_status=False)

    async def link_up(self) -> None:
        """Probe the receiver's TCP port (about once a second, jittered) until it accepts."""
        while True:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(self._host, self._port), PROBE_TIMEOUT_S)
            except (OSError, TimeoutError):
                await asyncio.sleep(random.uniform(0.5, 1.5) * PROBE_INTERVAL_S)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def send(self, batch: Batch, payload: bytes) -> None:
        if self._session is None:
            raise UplinkRetryLater("uplink not started")
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Content-Encoding": "gzip",
            "Idempotency-Key": idempotency_key(self.gateway_id, batch),
            "X-Edgeagent-Gateway": self.gateway_id,
            "X-Edgeagent-Buffer": batch.buffer_id,
            "X-Edgeagent-First-Seq": str(batch.first_seq),
            "X-Edgeagent-Last-Seq": str(batch.last_seq),
            "X-Edgeagent-Count": str(len(batch.readings)),
            "X-Edgeagent-Priority": batch.priority.name.lower(),
        }
        if self._auth:
            headers["Authorization"] = self._auth
        try:
            async with self._session.post(self._url, data=payload, headers=headers) as resp:
                status = resp.status
                if 200 <= status < 300:
                    return
                text = (await resp.text(errors="replace"))[:MAX_ERROR_BODY_CHARS]
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), resp.headers.get("Date"))
        except TimeoutError as exc:
            # The connection may look open while nothing comes back: rebuild the client.
            await self._session.close()
            self._session = self._new_session()
            raise UplinkRetryLater(f"no answer within {self.cfg.timeout_s:g} s") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UplinkRetryLater(f"cannot connect: {exc.os_error}", link_down=True) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UplinkRetryLater(f"{type(exc).__name__}: {exc}") from exc
        if status in (408, 429) or status >= 500:
            raise UplinkRetryLater(f"HTTP {status}", retry_after)
        raise UplinkRejected(status, text)
