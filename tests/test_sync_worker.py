"""One sync worker between a real buffer and a real HTTP receiver: what moves the cursor, what a retry sends.

The worker, the store (SQLite in ``tmp_path``) and the HTTP uplink are the production
ones; the receiver records each request as it came (``tests.receiver``). Waiting is on
what the receiver saw; the only times compared are lower bounds the worker must wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeagent.live import UplinkLive
from edgeagent.model import Priority, Reading
from edgeagent.store import Budget, DestinationFilter, Store
from edgeagent.sync.worker import SyncWorker
from edgeagent.uplinks.http import HttpUplink
from tests.helpers import free_port, wait_until
from tests.receiver import Answer, Receiver
from tests.test_uplink_http import GATEWAY, http_cfg

DEST = "platform"


def reading(i: int, device: str = "wl-01") -> Reading:
    return Reading(device, "water_level", 1_800_000_000 + i, 10.0 + i, "mm")


def delivered(receiver: Receiver) -> list[int]:
    return sorted(seq for r in receiver.acknowledged() for seq in r.seqs())


@dataclass(slots=True)
class Running:
    store: Store
    worker: SyncWorker
    live: UplinkLive

    def append(self, *readings: Reading) -> None:
        for r in readings:
            self.store.append(r)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    receiver: Receiver,
    *,
    filt: DestinationFilter | None = None,
    batch_max_readings: int = 50,
    rejected_retry_s: float = 300.0,
    bandwidth_bytes_per_s: int | None = None,
    backlog: list[Reading] = (),  # type: ignore[assignment]
    budgets: dict[Priority, Budget] | None = None,
    url: str | None = None,
    retry_s: tuple[float, float] = (0.05, 0.2),
) -> AsyncIterator[Running]:
    """A store holding ``backlog``, and a worker sending it to ``receiver``; stopped (and the store closed) after."""
    destinations = {DEST: filt or DestinationFilter()}
    async with Store(tmp_path / "b.sqlite", destinations=destinations, budgets=budgets) as store:
        for r in backlog:
            store.append(r)
        uplink = HttpUplink(http_cfg(url or receiver.url, timeout_s=2.0), GATEWAY)
        await uplink.start()
        live = UplinkLive(DEST, "http", uplink.target)
        worker = SyncWorker(
            store,
            uplink,
            live,
            gateway_id=GATEWAY,
            batch_max_readings=batch_max_readings,
            retry_min_s=retry_s[0],
            retry_max_s=retry_s[1],
            rejected_retry_s=rejected_retry_s,
            bandwidth_bytes_per_s=bandwidth_bytes_per_s,
        )
        task = asyncio.create_task(worker.run(), name="sync:platform")
        try:
            yield Running(store, worker, live)
        finally:
            worker.stop()
            try:
                await asyncio.wait_for(task, 5)
            finally:
                await uplink.close()


async def test_a_retry_sends_the_very_same_batch_though_newer_readings_arrived_meanwhile(tmp_path: Path) -> None:
    receiver = Receiver(Answer(503), Answer(429, headers={"Retry-After": "1"}))
    async with receiver, running(tmp_path, receiver, backlog=[reading(i) for i in range(3)]) as run:
        await wait_until(lambda: len(receiver.requests) >= 1, 5, "the first attempt")
        run.append(*(reading(i) for i in range(3, 8)))  # these arrive while the batch waits for its retry
        await wait_until(lambda: delivered(receiver) == list(range(1, 9)), 10, "readings 1 to 8 delivered")
    first, second, third = receiver.requests[:3]
    assert {r.headers["Idempotency-Key"] for r in (first, second, third)} == {first.headers["Idempotency-Key"]}
    assert first.body == second.body == third.body, "a retry resends the identical batch"
    assert third.seqs() == [1, 2, 3]
    assert (run.live.batches_sent, run.live.readings_sent) == (2, 8)


async def test_a_delivery_starts_the_retry_delays_again_from_the_shortest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgeagent.sync")
    receiver = Receiver(*[Answer(503)] * 4)  # then every batch is taken
    async with receiver, running(tmp_path, receiver, backlog=[reading(0)], retry_s=(0.05, 60.0)) as run:
        await wait_until(lambda: delivered(receiver) == [1], 10, "reading 1, after four refusals")
        # Else the next outage would start where this one ended (up to 0.8 s here, a minute
        # on), however long the link has been fine since.
        assert run.worker.failures_in_a_row == 0
        receiver.answers.append(Answer(503))
        run.append(reading(1))
        await wait_until(lambda: delivered(receiver) == [1, 2], 10, "reading 2, after one refusal")
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert retries[-1].endswith("retrying in 0.0 s"), retries  # drawn below retry_min (0.05 s) again


async def test_a_link_that_is_down_is_waited_for_on_its_probe_not_on_the_backoff_timer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgeagent.sync")
    receiver = Receiver(port=free_port())  # not listening yet: connections are refused
    # A backoff of up to ten minutes: only the link probe can bring the readings through in time.
    async with running(tmp_path, receiver, backlog=[reading(0)], retry_s=(600.0, 600.0)) as run:
        await wait_until(lambda: run.live.failures >= 1, 10, "a refused connection")
        async with receiver:
            await wait_until(lambda: delivered(receiver) == [1], 15, "delivery as soon as the receiver listens")
    assert any("sending resumes when the link is back" in r.getMessage() for r in caplog.records)


async def test_a_batch_the_receiver_never_acknowledged_is_still_unsent_when_the_worker_stops(tmp_path: Path) -> None:
    receiver = Receiver(*[Answer(503)] * 1000)
    async with receiver, running(tmp_path, receiver, backlog=[reading(i) for i in range(5)]) as run:
        await wait_until(lambda: len(receiver.requests) >= 3, 10, "three refused attempts")
    # The store is closed with the worker: open it again, as the next start would.
    async with Store(tmp_path / "b.sqlite", destinations=[DEST]) as store:
        stats = await store.stats()
        batch = await store.next_batch(DEST, 100)
    assert stats.unsent[DEST] == 5, "nothing was acknowledged, so nothing may count as sent"
    assert batch is not None and [r.seq for r in batch.readings] == [1, 2, 3, 4, 5]
    assert run.live.readings_sent == 0 and run.live.failures >= 3


async def test_a_refused_batch_is_kept_retried_after_rejected_retry_s_and_logged_once_per_episode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgeagent.sync")
    refusal = Answer(422, body="schema mismatch: field v")
    receiver = Receiver(refusal, refusal, refusal, Answer(200), refusal, refusal)
    async with (
        receiver,
        running(tmp_path, receiver, rejected_retry_s=0.3, backlog=[reading(i) for i in range(3)]) as run,
    ):
        await wait_until(lambda: len(receiver.acknowledged()) >= 1, 10, "delivery after three refusals")
        run.append(reading(3))
        await wait_until(lambda: len(receiver.acknowledged()) >= 2, 10, "delivery after two more refusals")
    statuses = [r.status for r in receiver.requests]
    assert statuses == [422, 422, 422, 200, 422, 422, 200]
    after = zip(receiver.requests, receiver.requests[1:], statuses, strict=False)
    gaps = [b.at - a.at for a, b, status in after if status == 422]
    assert min(gaps) >= 0.3 - 0.02, f"a refused batch was sent again after {min(gaps):.2f} s (rejected_retry_s = 0.3)"
    assert receiver.acknowledged()[0].seqs() == [1, 2, 3], "the refused batch was kept and delivered"
    refusals = [r for r in caplog.records if "refused batch" in r.getMessage()]
    assert len(refusals) == 2, "logged once when refusals start, and once more after a delivery in between"
    assert sum("delivers again" in r.getMessage() for r in caplog.records) == 2
    assert run.live.failures == 5


async def test_the_byte_rate_cap_paces_a_backlog(tmp_path: Path) -> None:
    rate = 1000  # bytes per second; the burst is one second's worth
    loop = asyncio.get_running_loop()
    async with Receiver() as receiver:
        started = loop.time()
        backlog = [reading(i) for i in range(400)]
        async with running(tmp_path, receiver, bandwidth_bytes_per_s=rate, batch_max_readings=40, backlog=backlog):
            await wait_until(lambda: len(receiver.requests) >= 5, 20, "five batches")
    sizes = [int(r.headers["Content-Length"]) for r in receiver.requests]
    for k in range(1, 5):
        sent_before = sum(sizes[:k])  # payload bytes the bucket paid for before request k could start
        earliest = (sent_before - rate) / rate
        assert receiver.requests[k].at - started >= earliest - 0.02, (
            f"request {k} after {sent_before} bytes came {receiver.requests[k].at - started:.2f} s in, "
            f"not before {earliest:.2f} s at {rate} B/s"
        )
    assert (sum(sizes[:4]) - rate) / rate >= 0.3, "the batches are large enough for the cap to hold one back"


async def test_a_batch_the_filter_leaves_empty_is_passed_over_and_the_next_is_sent(tmp_path: Path) -> None:
    only_wl02 = DestinationFilter(devices=frozenset({"wl-02"}))
    backlog = [*(reading(i) for i in range(5)), reading(5, device="wl-02")]
    async with (
        Receiver() as receiver,
        running(tmp_path, receiver, filt=only_wl02, batch_max_readings=5, backlog=backlog),
    ):
        await wait_until(lambda: len(receiver.acknowledged()) >= 1, 5, "the one reading of wl-02")
    (request,) = receiver.requests
    assert request.seqs() == [6]


async def test_a_held_batch_whose_readings_a_full_buffer_dropped_is_read_afresh_not_sent(tmp_path: Path) -> None:
    receiver = Receiver(*[Answer(503)] * 100_000)
    budgets = {p: Budget(4 * 1024, "drop_oldest") for p in Priority}
    async with receiver, running(tmp_path, receiver, budgets=budgets, backlog=[reading(i) for i in range(50)]) as run:
        await wait_until(lambda: len(receiver.requests) >= 1, 5, "the first batch held for a retry")
        run.append(*(reading(i) for i in range(50, 20_050)))  # an outage's worth: the budget drops the oldest
        await run.store.flush()
        stats = await run.store.stats()
        dropped = stats.dropped["telemetry"]["drop_oldest"]
        assert dropped >= 50, "the held batch's readings are among those dropped"
        kept = run.store.last_seq - dropped
        receiver.answers.clear()  # the receiver is back

        def too_many() -> str | None:
            n = len(delivered(receiver))
            return f"{n} readings delivered, {dropped} of {run.store.last_seq} were dropped" if n > kept else None

        await wait_until(lambda: len(delivered(receiver)) == kept, 20, "every reading kept", fail_if=too_many)
    got = delivered(receiver)
    assert len(set(got)) == len(got) and got[0] == dropped + 1, "exactly what was kept, from the oldest kept"
