"""One sync worker per destination: read from its cursor, send, advance on acknowledgement.

The worker sleeps on the store's event, not on a timer, so a reading goes out as soon
as it has its number (see ``edgeagent.store``), but at most one batch starts every
``SEND_EVERY_S``: what arrives meanwhile rides along, which halves the requests (each
costs far more than the readings in it) for a few milliseconds of lag. A backlog goes
in full batches back to back. One batch is in
flight at a time, so memory stays flat however large the backlog. A transient failure
backs off (capped, full jitter, Retry-After honoured); a refusal is reported once and
retried slowly; nothing is ever dropped here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from edgeagent.aio import wait_event
from edgeagent.backoff import Backoff
from edgeagent.errors import StoreError, UplinkRejected, UplinkRetryLater
from edgeagent.live import UplinkLive
from edgeagent.store import Batch, Store
from edgeagent.sync.pacing import TokenBucket
from edgeagent.sync.senml import encode_gzip
from edgeagent.uplinks import Uplink

log = logging.getLogger(__name__)

BEAT_EVERY_S = 1.0
STORE_RETRY_S = 1.0
# The shortest time between the starts of two batches (a backlog's full batches take longer).
SEND_EVERY_S = 0.02


class SyncWorker:
    def __init__(
        self,
        store: Store,
        uplink: Uplink,
        live: UplinkLive,
        *,
        gateway_id: str,
        batch_max_readings: int,
        retry_min_s: float,
        retry_max_s: float,
        rejected_retry_s: float,
        bandwidth_bytes_per_s: int | None = None,
        beat: Callable[[], None] | None = None,
        on_result: Callable[[str, bool, str], None] | None = None,
    ) -> None:
        self.store = store
        self.uplink = uplink
        self.live = live
        self.gateway_id = gateway_id
        self.batch_max_readings = batch_max_readings
        self.rejected_retry_s = rejected_retry_s
        self._bucket = TokenBucket(bandwidth_bytes_per_s) if bandwidth_bytes_per_s else None
        self._backoff = Backoff(retry_min_s, retry_max_s)
        self._beat = beat or (lambda: None)
        self._on_result = on_result
        self._wake = store.subscribe()
        self._stopping = asyncio.Event()
        self._last_problem: str | None = None
        self._held: tuple[Batch, bytes] | None = None  # sent but not yet acknowledged
        self._last_send = 0.0
        self._last_full = False  # the last batch sent was as large as allowed

    @property
    def failures_in_a_row(self) -> int:
        """Failed sends since the last delivery: the retry delay grows from it."""
        return self._backoff.failures

    def stop(self) -> None:
        """Finish the batch in flight, then return from ``run``; stop hearing the store."""
        self._stopping.set()
        self._wake.set()
        self.store.unsubscribe(self._wake)

    async def _pause(self, delay_s: float) -> None:
        """Sleep, checking in with the watchdog, and wake early when stopping."""
        deadline = time.monotonic() + delay_s
        while not self._stopping.is_set():
            self._beat()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await wait_event(self._stopping, min(left, BEAT_EVERY_S))

    async def _wait_link(self, ceiling_s: float) -> None:
        """Wait until the uplink says its link is back, or the backoff ceiling passes."""
        probe = asyncio.create_task(self.uplink.link_up(), name=f"link-up:{self.uplink.name}")
        try:
            deadline = time.monotonic() + ceiling_s
            while not probe.done() and not self._stopping.is_set() and time.monotonic() < deadline:
                self._beat()
                await asyncio.wait({probe}, timeout=min(BEAT_EVERY_S, max(0.0, deadline - time.monotonic())))
        finally:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe

    async def _wait_for_data(self) -> None:
        await wait_event(self._wake, BEAT_EVERY_S)

    async def run(self) -> None:
        name = self.uplink.name
        while not self._stopping.is_set():
            self._beat()
            self._wake.clear()
            if self._held is not None and not self.store.still_whole(self._held[0]):
                self._held = None  # the buffer was full and dropped part of it: read afresh
            if self._held is not None:
                # A retry sends the very same batch, so its idempotency key does not change.
                batch, payload = self._held
            else:
                # Live readings wait a little to ride along; a backlog (full batches) never does.
                wait = self._last_send + SEND_EVERY_S - time.monotonic()
                if wait > 0 and not self._last_full:
                    await self._pause(wait)
                    continue
                try:
                    batch = await self.store.next_batch(name, self.batch_max_readings)
                except StoreError as exc:
                    # The store reports (and replaces a damaged file); this worker waits and reads again.
                    self._problem(f"cannot read the buffer: {exc}; retrying", logging.ERROR)
                    await self._pause(STORE_RETRY_S)
                    continue
                if batch is None:
                    await self._wait_for_data()
                    continue
                if not batch.readings:  # everything scanned was filtered out for this destination
                    await self.store.ack(batch)
                    continue
                payload = encode_gzip(self.gateway_id, batch.readings, batch.buffer_id)
                self._held = (batch, payload)
            if self._bucket is not None:
                await self._pause(self._bucket.delay_for(len(payload)))
                if self._stopping.is_set():
                    break
            self.live.last_attempt_ts = time.time()
            self._last_send = time.monotonic()
            self._last_full = len(batch.readings) >= self.batch_max_readings
            try:
                await self.uplink.send(batch, payload)
            except UplinkRetryLater as exc:
                delay = exc.retry_after_s if exc.retry_after_s is not None else self._backoff.next_delay()
                if exc.link_down:
                    self._problem(f"{exc}; sending resumes when the link is back", logging.WARNING)
                    await self._wait_link(delay)
                else:
                    self._problem(f"{exc}; retrying in {delay:.1f} s", logging.WARNING)
                    await self._pause(delay)
                continue
            except UplinkRejected as exc:
                self._problem(
                    f"receiver refused batch {batch.first_seq}-{batch.last_seq}: {exc}; "
                    f"kept, retrying every {self.rejected_retry_s:g} s",
                    logging.ERROR,
                )
                await self._pause(self.rejected_retry_s)
                continue
            if self._bucket is not None:
                self._bucket.spend(len(payload))
            self._held = None
            await self.store.ack(batch)
            self._backoff.reset()
            if self._last_problem is not None:
                log.info("uplink %s delivers again", name)
                self._last_problem = None
            live = self.live
            live.last_result = f"ok: {len(batch.readings)} readings ({batch.first_seq}-{batch.last_seq})"
            live.last_success_ts = time.time()
            if self._on_result is not None:
                self._on_result(name, True, live.last_result)
            live.batches_sent += 1
            live.readings_sent += len(batch.readings)
            live.bytes_sent += len(payload)

    def _problem(self, text: str, level: int) -> None:
        """Record a failure; log it only when it differs from the last one (no storms)."""
        self.live.failures += 1
        self.live.last_result = text
        if self._on_result is not None:
            self._on_result(self.uplink.name, False, text)
        key = text.split(";")[0]
        if key != self._last_problem:
            log.log(level, "uplink %s: %s", self.uplink.name, text)
            self._last_problem = key
