"""A long outage at a high rate on a small budget: bounded file, drops exactly as the policy says.

Budgets here are small next to what is written: a block keeps one of these readings in
about a byte, so a class fills up only at a few KiB.
"""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from edgeagent.errors import StoreFull
from edgeagent.model import Priority, Reading
from edgeagent.store import Budget, DestinationFilter, Store

KIB = 1024
BATCH = 1000


def _reading(i: int, priority: Priority, device: str = "dev") -> Reading:
    return Reading(device, priority.name.lower(), 1_800_000_000 + i / 1000, round(i * 0.1, 1), "mm", priority=priority)


def _file_bytes(path: Path) -> int:
    return sum(Path(f"{path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{path}{s}").exists())


async def test_outage_on_a_small_budget(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    budgets = {
        Priority.ALARM: Budget(256 * KIB, "reject_new"),
        Priority.EVENT: Budget(8 * KIB, "thin", thin_keep_every=2),
        Priority.TELEMETRY: Budget(32 * KIB, "drop_oldest"),
    }
    total_budget = sum(b.max_bytes for b in budgets.values())
    committed: dict[Priority, list[int]] = {p: [] for p in Priority}
    biggest_file = 0
    # The uplink is down the whole time: nothing is ever acknowledged.
    async with Store(path, destinations=["up"], budgets=budgets, commit_max_readings=BATCH) as store:
        i = 0
        for _ in range(60):  # 60,000 readings: several times what the budgets hold
            for _ in range(BATCH):
                i += 1
                prio = Priority.ALARM if i % 500 == 0 else Priority.EVENT if i % 10 == 0 else Priority.TELEMETRY
                store.append(_reading(i, prio))
            before = store.last_seq
            await store.flush()
            rows = await store.all_readings()
            for r in rows:
                if r.seq > before:
                    committed[r.priority].append(r.seq)
            biggest_file = max(biggest_file, _file_bytes(path))
        stats = await store.stats()
        kept = await store.all_readings()

    kept_by = {p: [r.seq for r in kept if r.priority == p] for p in Priority}
    # One batch of rows is at most ~BATCH * 40 bytes, plus SQLite's own pages (schema, page 1, WAL frames).
    slack = BATCH * 40 + 256 * KIB
    assert biggest_file <= total_budget + slack, (biggest_file, total_budget)
    # Alarms: all of them survive (their budget is not reached), none dropped.
    assert kept_by[Priority.ALARM] == committed[Priority.ALARM] and len(kept_by[Priority.ALARM]) == 120
    # Telemetry: drop oldest means what is kept is exactly the newest ones.
    tel = committed[Priority.TELEMETRY]
    assert kept_by[Priority.TELEMETRY] == tel[len(tel) - len(kept_by[Priority.TELEMETRY]) :]
    assert len(kept_by[Priority.TELEMETRY]) < len(tel)
    # Events: thinned, so the newest are all there and older ones are sparser; none invented.
    ev = committed[Priority.EVENT]
    assert set(kept_by[Priority.EVENT]) <= set(ev)
    assert kept_by[Priority.EVENT][-1000:] == ev[-1000:]
    # Counters match exactly what is gone, per class and reason, and nothing else was dropped.
    assert stats.dropped == {
        "telemetry": {"drop_oldest": len(tel) - len(kept_by[Priority.TELEMETRY])},
        "event": {"thinned": len(ev) - len(kept_by[Priority.EVENT])},
    }
    # What the uplink still has to send is exactly what is kept.
    assert stats.unsent == {"up": len(kept)}


async def test_reject_new_keeps_the_first_and_counts_the_rest(tmp_path: Path) -> None:
    budgets = {
        Priority.ALARM: Budget(4 * KIB, "reject_new"),
        Priority.EVENT: Budget(4 * KIB, "drop_oldest"),
        Priority.TELEMETRY: Budget(4 * KIB, "drop_oldest"),
    }
    async with Store(tmp_path / "b.sqlite", destinations=["up"], budgets=budgets) as store:
        for i in range(10_000):
            store.append(_reading(i, Priority.ALARM))
            if i % 1000 == 999:
                await store.flush()
        await store.flush()
        kept = await store.all_readings()
        stats = await store.stats()
    values = [r.value for r in kept]
    assert values == [round(i * 0.1, 1) for i in range(len(kept))], "the oldest alarms are the ones kept"
    assert 1000 < len(kept) < 10_000
    assert stats.dropped == {"alarm": {"rejected_full": 10_000 - len(kept)}}
    assert [r.seq for r in kept] == list(range(1, len(kept) + 1)), "rejected readings take no number"


async def test_drop_counters_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    budgets = {p: Budget(4 * KIB, "drop_oldest") for p in Priority}
    async with Store(path, destinations=["up"], budgets=budgets) as store:
        for i in range(20_000):
            store.append(_reading(i, Priority.TELEMETRY))
        await store.flush()
        dropped = (await store.stats()).dropped
    assert dropped["telemetry"]["drop_oldest"] > 0
    async with Store(path, destinations=["up"], budgets=budgets) as store:
        assert (await store.stats()).dropped == dropped


async def test_acknowledged_rows_make_room_before_anything_is_dropped(tmp_path: Path) -> None:
    budgets = {p: Budget(4 * KIB, "drop_oldest") for p in Priority}
    async with Store(tmp_path / "b.sqlite", destinations=["up"], budgets=budgets) as store:
        for round_ in range(10):
            for i in range(2000):
                store.append(_reading(round_ * 2000 + i, Priority.TELEMETRY))
            await store.flush()
            while (batch := await store.next_batch("up", 500)) is not None:
                await store.ack(batch)
        stats = await store.stats()
    assert stats.dropped == {}, "an uplink that keeps up loses nothing, however small the budget"


async def test_two_destinations_with_filters_get_exactly_their_share(tmp_path: Path) -> None:
    filters = {
        "drainage": DestinationFilter(devices=frozenset({"wl-1"})),
        "alarms-only": DestinationFilter(classes=frozenset({Priority.ALARM})),
    }
    async with Store(tmp_path / "b.sqlite", destinations=filters) as store:
        for i in range(300):
            device = "wl-1" if i % 3 else "radar-1"
            prio = Priority.ALARM if i % 7 == 0 else Priority.TELEMETRY
            store.append(_reading(i, prio, device))
        await store.flush()
        everything = await store.all_readings()
        got: dict[str, list[int]] = {}
        for dest in filters:
            while (batch := await store.next_batch(dest, 16)) is not None:
                got.setdefault(dest, []).extend(r.seq for r in batch.readings)
                await store.ack(batch)
        # Everything was either delivered or wanted by no destination: all of it can go.
        assert await store.prune() == len(everything)
    assert sorted(got["drainage"]) == [r.seq for r in everything if r.device == "wl-1"]
    assert sorted(got["alarms-only"]) == [r.seq for r in everything if r.priority == Priority.ALARM]


async def test_disk_full_keeps_running_and_recovers_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    store = Store(path, destinations=["up"], commit_interval_ms=20, max_pending_readings=10_000)
    await store.open()
    try:
        store.append(_reading(0, Priority.TELEMETRY))
        await store.flush()
        pages = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]
        # SQLite's own "database or disk is full": the file may not grow past its current size.
        # (Enough readings that their blocks, a byte or so each, need pages the file has not.)
        await store._run(store._core.conn.execute, f"PRAGMA max_page_count = {pages}")  # type: ignore[union-attr]
        for i in range(1, 30_001):
            store.append(_reading(i, Priority.TELEMETRY))
        with pytest.raises(StoreFull):
            await store.flush()
        stats = await store.stats()
        assert stats.last_error is not None and "disk full" in stats.last_error
        assert stats.pending_commit == 10_000, "memory stays bounded while the disk is full"
        assert stats.dropped == {"telemetry": {"store_unavailable": 20_000}}
        # Space comes back: the next commit goes through without anyone restarting anything.
        await store._run(store._core.conn.execute, "PRAGMA max_page_count = 1073741823")  # type: ignore[union-attr]
        await store.flush()
        stats = await store.stats()
        assert stats.last_error is None and stats.pending_commit == 0
        kept = await store.all_readings()
        assert [r.seq for r in kept] == list(range(1, len(kept) + 1))
        # Reading 0 was committed before; 1-20000 were shed (and counted); 20001-30000 survived.
        assert [r.value for r in kept] == [0.0] + [round(i * 0.1, 1) for i in range(20_001, 30_001)]
    finally:
        await store.close()


def _reading_at(i: int) -> Reading:
    return Reading("dev", "t", 1_800_000_000 + i / 10, round(i * 0.37 % 97, 2), "mm", priority=Priority.TELEMETRY)


async def test_a_full_class_frees_room_for_several_commits_not_a_little_at_every_one(tmp_path: Path) -> None:
    """Each deletion rewrites pages on the SD card: a full class gives up a slack beyond what a commit needs."""
    budgets = {p: Budget(64 * KIB, "reject_new" if p is Priority.ALARM else "drop_oldest") for p in Priority}
    dropped_so_far: list[int] = []
    async with Store(tmp_path / "b.sqlite", destinations=["up"], budgets=budgets, commit_max_readings=200) as store:
        i = 0
        for _ in range(220):  # 44,000 readings in commits of 200, through a budget that holds about 33,000
            for _ in range(200):
                i += 1
                store.append(_reading_at(i))
            await store.flush()
            dropped_so_far.append((await store.stats()).dropped.get("telemetry", {}).get("drop_oldest", 0))
        kept = len(await store.all_readings())
    per_commit = [b - a for a, b in itertools.pairwise(dropped_so_far)]
    once_full = per_commit[next(k for k, n in enumerate(per_commit) if n) :]
    assert len(once_full) >= 20, "the class filled up early enough to watch it"
    giving_up = [n for n in once_full if n]
    assert len(giving_up) <= len(once_full) / 2, f"{len(giving_up)} of {len(once_full)} commits deleted readings"
    assert dropped_so_far[-1] == i - kept, "every reading given up is counted, and only those"
