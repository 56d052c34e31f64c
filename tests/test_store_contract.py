"""What the buffer promises the sync workers, one promise a test, on a real SQLite file.

Readings stay until every destination has them; a destination gets its own classes and
devices, from memory and from the file alike, in batches no larger than asked, from
just past its cursor; an alarm reaches the card at once; a worker is woken, not left to
poll; what a full class gives up is counted as dropped only if someone still lacked it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from edgeagent.aio import wait_event
from edgeagent.config import DEFAULT_BUDGETS as CONFIG_DEFAULT_BUDGETS
from edgeagent.model import Priority, Reading
from edgeagent.store import DEFAULT_BUDGETS, Budget, DestinationFilter, Store
from tests.helpers import wait_until

KIB = 1024


def reading(i: int, device: str = "wl-1", priority: Priority = Priority.TELEMETRY, ts: float | None = None) -> Reading:
    return Reading(device, "level", 1_800_000_000 + i if ts is None else ts, round(i * 0.1, 1), "mm", priority=priority)


async def drain(store: Store, destination: str, limit: int = 100) -> list[int]:
    """Every seq the destination is sent, acknowledging each batch; fails at once on a batch sent again."""
    seqs: list[int] = []
    last: tuple[int, list[int]] | None = None
    while (batch := await store.next_batch(destination, limit)) is not None:
        got = [r.seq for r in batch.readings]
        assert not (set(got) & set(seqs)), f"acknowledged readings sent again: {sorted(set(got) & set(seqs))}"
        assert (batch.scanned_to, got) != last, f"the same batch again after its acknowledgement: {batch}"
        last = (batch.scanned_to, got)
        seqs += got
        await store.ack(batch)
    return seqs


async def test_a_reading_leaves_the_file_only_once_every_destination_has_it(tmp_path: Path) -> None:
    async with Store(tmp_path / "b.sqlite", destinations=["fast", "slow"]) as store:
        for i in range(20):
            store.append(reading(i))
        await store.flush()
        assert await drain(store, "fast") == list(range(1, 21))
        await store.prune()
        assert await drain(store, "slow") == list(range(1, 21)), "the slow destination still gets every reading"


async def test_a_destination_gets_only_its_classes_and_counts_only_those_as_unsent(tmp_path: Path) -> None:
    filters = {"alarms": DestinationFilter(classes=frozenset({Priority.ALARM})), "all": DestinationFilter()}
    async with Store(tmp_path / "b.sqlite", destinations=filters) as store:
        for i in range(6):
            store.append(reading(i, priority=Priority.ALARM if i == 4 else Priority.TELEMETRY))
        await wait_until(lambda: store.last_seq == 6, 5, "the readings numbered")
        stats = await store.stats()
        assert stats.unsent == {"alarms": 1, "all": 6}
        assert await drain(store, "alarms") == [5]


async def test_the_device_filter_holds_for_readings_from_memory_and_from_the_file(tmp_path: Path) -> None:
    only = {"drainage": DestinationFilter(devices=frozenset({"wl-2"}))}
    async with Store(tmp_path / "b.sqlite", destinations=only, commit_interval_ms=60_000) as store:
        for i in range(10):
            store.append(reading(i, device="wl-2" if i % 3 == 0 else "wl-1"))
        await wait_until(lambda: store.last_seq == 10, 5, "the readings numbered")
        assert await drain(store, "drainage") == [1, 4, 7, 10], "from memory"
    async with Store(tmp_path / "b.sqlite", destinations=only) as store:
        for i in range(10, 20):
            store.append(reading(i, device="wl-2" if i % 3 == 0 else "wl-1"))
        await store.flush()  # into the file: now sent from there
        assert await drain(store, "drainage") == [13, 16, 19], "from the file"


async def test_a_batch_never_mixes_readings_timed_from_boot_with_wall_clock_ones(tmp_path: Path) -> None:
    async with Store(tmp_path / "b.sqlite", destinations=["up"]) as store:
        store.append(reading(0, ts=600.0))  # the clock not yet set: a 1970 time, kept relative to the boot
        store.append(reading(1, ts=time.time()))
        await wait_until(lambda: store.last_seq == 2, 5, "the readings numbered")
        first = await store.next_batch("up", 100)
        assert first is not None and [r.seq for r in first.readings] == [1], "one base time cannot serve both"
        assert first.readings[0].boot is not None
        await store.ack(first)
        second = await store.next_batch("up", 100)
        assert second is not None and [(r.seq, r.boot) for r in second.readings] == [(2, None)]


async def test_a_batch_from_the_file_holds_at_most_the_limit_and_starts_just_past_the_cursor(tmp_path: Path) -> None:
    async with Store(tmp_path / "b.sqlite", destinations=["up"], commit_max_readings=1000) as store:
        for i in range(50):
            store.append(reading(i))
        await store.flush()
        batches = []
        while (batch := await store.next_batch("up", 7)) is not None:
            batches.append([r.seq for r in batch.readings])
            await store.ack(batch)
    assert [len(b) for b in batches] == [7] * 7 + [1]
    assert [s for b in batches for s in b] == list(range(1, 51)), "each reading once, in order"


async def test_pruning_inside_a_block_keeps_every_reading_not_yet_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    async with Store(path, destinations=["up"], commit_max_readings=1000) as store:
        for i in range(30):
            store.append(reading(i))
        await store.flush()  # one block of 30
        batch = await store.next_batch("up", 12)
        assert batch is not None
        await store.ack(batch)
        assert await store.prune() == 12
        assert [r.seq for r in await store.all_readings()] == list(range(13, 31))
    async with Store(path, destinations=["up"]) as store:
        assert await drain(store, "up") == list(range(13, 31))


async def test_an_acknowledgement_of_an_older_batch_never_moves_the_cursor_back(tmp_path: Path) -> None:
    async with Store(tmp_path / "b.sqlite", destinations=["up"]) as store:
        for i in range(10):
            store.append(reading(i))
        await store.flush()
        old = await store.next_batch("up", 4)
        assert old is not None
        await store.ack(old)
        newer = await store.next_batch("up", 4)
        assert newer is not None
        await store.ack(newer)
        await store.ack(old)  # late, and again
        rest = await store.next_batch("up", 100)
        stats = await store.stats()
    assert rest is not None and rest.first_seq == 9
    assert stats.unsent == {"up": 2}


async def test_an_alarm_reaches_the_card_at_once_not_a_commit_interval_later(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"

    def alarms_in_file() -> int:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT coalesce(sum(count), 0) FROM blocks_alarm").fetchone()[0])

    async with Store(path, destinations=["up"], commit_interval_ms=60_000) as store:
        store.append(reading(0, priority=Priority.ALARM))
        store.append(reading(1))
        await wait_until(lambda: alarms_in_file() == 1, 10, "the alarm in the file (the commit interval is 60 s)")


async def test_a_subscriber_is_woken_when_readings_become_sendable(tmp_path: Path) -> None:
    async with Store(tmp_path / "b.sqlite", destinations=["up"], commit_interval_ms=60_000) as store:
        woken = store.subscribe()
        store.append(reading(0))
        assert await wait_event(woken, 5), "a sync worker waiting on the store was not woken"
        assert store.last_seq == 1


async def test_what_a_full_class_gives_up_counts_as_dropped_only_if_a_destination_lacked_it(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    budgets = {p: Budget(4 * KIB, "drop_oldest") for p in Priority}
    # A long commit interval and room for 2000 waiting readings: no commit or prune runs but those called here.
    async with Store(
        path, destinations=["up"], budgets=budgets, commit_interval_ms=60_000, commit_max_readings=2000
    ) as store:
        for i in range(1000):
            store.append(reading(i))
        await store.flush()  # one block of 1000 readings
        batch = await store.next_batch("up", 400)
        assert batch is not None
        await store.ack(batch)  # 1-400 delivered, 401-1000 not
        i = 1000
        for _ in range(50):  # until the class is full and its oldest block goes
            if (await store.stats()).dropped:
                break
            for _ in range(1000):
                store.append(reading(i))
                i += 1
            await store.flush()
        dropped = (await store.stats()).dropped
    # The first block gave up 600 readings the destination lacked (and 400 it had); any later one, 1000.
    assert set(dropped) == {"telemetry"} and dropped["telemetry"]["drop_oldest"] % 1000 == 600, dropped
    async with Store(path, destinations=["up"], budgets=budgets) as store:
        assert (await store.stats()).dropped == dropped, "drop counts survive a restart"


def test_the_buffers_own_default_budgets_are_the_documented_ones() -> None:
    """A store opened without budgets (a salvage buffer, a tool) holds alarms as the config's defaults say."""
    for name, budget in CONFIG_DEFAULT_BUDGETS.items():
        expected = Budget(budget.max_bytes, budget.policy, budget.thin_keep_every)
        assert DEFAULT_BUDGETS[Priority[name.upper()]] == expected, name
    assert DEFAULT_BUDGETS[Priority.ALARM].policy == "reject_new"


async def test_a_reject_new_class_counts_the_readings_waiting_in_memory_and_takes_not_one_more(tmp_path: Path) -> None:
    budgets = {**DEFAULT_BUDGETS, Priority.TELEMETRY: Budget(1024, "reject_new")}
    # Nothing is committed during the test: the readings numbered stay in memory.
    async with Store(
        tmp_path / "b.sqlite",
        destinations=["up"],
        budgets=budgets,
        commit_interval_ms=60_000,
        commit_max_readings=10_000,
    ) as store:
        i = 0
        for burst in (200, 57, 10):
            for _ in range(burst):
                store.append(reading(i))
                i += 1
            await asyncio.sleep(0)  # a step of the loop: the burst is numbered (or refused) as one
        stats = await store.stats()
    # About 4 bytes a reading before any block measures them: 256 fit in 1 KiB, whichever step they came in.
    assert stats.last_seq == 256
    assert stats.dropped == {"telemetry": {"rejected_full": 11}}
