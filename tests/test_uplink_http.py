"""The HTTP uplink against a real aiohttp receiver: which answers acknowledge, what each batch says about itself.

One ``send`` is one POST; returning means acknowledged (the cursor may move), and every
other outcome is one of the project's two errors. These are the rules a receiver's
operator reads in docs/uplinks.md, checked answer by answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from edgeagent.config import HttpUplinkConfig
from edgeagent.errors import UplinkRejected, UplinkRetryLater
from edgeagent.model import Priority, Reading
from edgeagent.store import Batch
from edgeagent.store.numbered import Numbered
from edgeagent.sync.senml import encode_gzip
from edgeagent.uplinks.http import HttpUplink, redact_url
from tests.helpers import free_port, uplink_running
from tests.receiver import Answer, Receiver

GATEWAY = "gw-test"
BUFFER = "3f9c0e7a5b2d4c18"


def http_cfg(url: str, **kwargs: object) -> HttpUplinkConfig:
    return HttpUplinkConfig.model_validate({"kind": "http", "name": "platform", "url": url, **kwargs})


def filtered_batch() -> tuple[Batch, bytes]:
    """Readings 5, 7 and 9 of a destination whose filter left out 6 and 8; scanned up to 10."""
    part = Numbered(Priority.TELEMETRY, "boot")
    for seq in (5, 7, 9):
        part.append(seq, Reading("wl-01", "water_level", 1_800_000_000 + seq, 40.0 + seq, "mm"))
    batch = Batch("platform", Priority.TELEMETRY, part, scanned_to=10, buffer_id=BUFFER)
    return batch, encode_gzip(GATEWAY, part, BUFFER)


def started(cfg: HttpUplinkConfig) -> contextlib.AbstractAsyncContextManager[HttpUplink]:
    return uplink_running(HttpUplink(cfg, GATEWAY))


async def test_only_a_2xx_acknowledges_5xx_408_429_are_retried_and_any_other_answer_refuses() -> None:
    acknowledged = (200, 202, 204)
    retried = (408, 429, 500, 502, 503, 504)
    refused = (300, 304, 400, 401, 404, 413, 422)
    answers = [Answer(status) for status in (*acknowledged, *retried, *refused)]
    async with Receiver(*answers) as receiver, started(http_cfg(receiver.url)) as uplink:
        batch, payload = filtered_batch()
        for _ in acknowledged:
            await uplink.send(batch, payload)
        for status in retried:
            with pytest.raises(UplinkRetryLater, match=f"HTTP {status}") as later:
                await uplink.send(batch, payload)
            assert not later.value.link_down
        for status in refused:
            with pytest.raises(UplinkRejected) as rejected:
                await uplink.send(batch, payload)
            assert rejected.value.status == status
    assert len(receiver.requests) == len(answers), "one POST per send, no redirect followed"


async def test_a_batch_names_its_gateway_buffer_and_first_and_last_seq_in_its_headers(tmp_path: Path) -> None:
    token_file = tmp_path / "platform.token"
    token_file.write_text("s3cret-ingest-token\n")
    async with Receiver() as receiver, started(http_cfg(receiver.url, token_file=str(token_file))) as uplink:
        batch, payload = filtered_batch()
        await uplink.send(batch, payload)
    (request,) = receiver.requests
    headers = request.headers
    assert headers["Idempotency-Key"] == f"{GATEWAY}:{BUFFER}:5-9"
    assert headers["X-Edgeagent-Gateway"] == GATEWAY
    assert headers["X-Edgeagent-Buffer"] == BUFFER
    assert (headers["X-Edgeagent-First-Seq"], headers["X-Edgeagent-Last-Seq"]) == ("5", "9")
    assert headers["X-Edgeagent-Count"] == "3"
    assert headers["X-Edgeagent-Priority"] == "telemetry"
    assert headers["Content-Type"] == "application/senml+json"
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Authorization"] == "Bearer s3cret-ingest-token"
    assert request.seqs() == [5, 7, 9]


async def test_a_refused_connection_is_the_link_down_and_the_probe_returns_only_once_it_accepts() -> None:
    port = free_port()
    async with started(http_cfg(f"http://127.0.0.1:{port}/ingest")) as uplink:
        with pytest.raises(UplinkRetryLater, match="cannot connect") as down:
            await uplink.send(*filtered_batch())
        assert down.value.link_down
        probe = asyncio.create_task(uplink.link_up(), name="link-up-probe")
        try:
            # Nothing listens: the probe keeps trying (about once a second), it does not give up.
            done, _ = await asyncio.wait({probe}, timeout=0.3)
            assert not done, "link_up returned while the receiver still refused connections"
            async with Receiver(port=port):
                await asyncio.wait_for(probe, 5)
        finally:
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)


async def test_after_an_answer_timeout_the_next_send_goes_on_a_new_client() -> None:
    async with (
        Receiver(Answer(hang=True)) as receiver,
        started(http_cfg(receiver.url, timeout_s=0.3)) as uplink,
    ):
        with pytest.raises(UplinkRetryLater, match=r"no answer within 0\.3 s"):
            await uplink.send(*filtered_batch())
        await uplink.send(*filtered_batch())
    assert [r.status for r in receiver.requests] == [0, 200]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pa55@ingest.example.org:8443/v1/senml?key=abc#x", "https://ingest.example.org:8443/v1/senml"),
        ("http://ingest.example.org/senml?token=abc", "http://ingest.example.org/senml"),
    ],
)
def test_the_url_shown_on_the_page_has_no_credentials_and_no_query(url: str, shown: str) -> None:
    assert redact_url(url) == shown
