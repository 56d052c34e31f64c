"""The tail: readings sendable before any commit, and what a crash or a power cut leaves of them.

A SIGKILL leaves the files exactly as the kernel holds them, so a copy of the state
folder taken while the store runs, without closing it, is what the next start of a
killed agent finds. A power cut can also lose the tail's last records, or leave a tail
written under another boot.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
from pathlib import Path

from edgeagent.model import Priority, Reading
from edgeagent.store import Store
from edgeagent.store.tail import MAGIC, tail_path

N = 300


def _r(i: int, priority: Priority = Priority.TELEMETRY) -> Reading:
    return Reading("wl-01", "water_level", 1_800_000_000 + i * 0.1, round(40 + i * 0.1, 1), "mm", priority=priority)


async def _killed_with_readings_in_the_tail(tmp_path: Path, *, acked: int = 0) -> tuple[Path, int, list[int]]:
    """A store that numbered N readings (none in its file), maybe acknowledged some, then was killed.

    Returns (the copied buffer, its reservation, the numbers a destination received).
    """
    live = tmp_path / "live" / "buffer.sqlite"
    store = Store(live, destinations=["up"], commit_interval_ms=60_000)
    await store.open()
    try:
        for i in range(N):
            store.append(_r(i))
            if i % 50 == 49:
                await asyncio.sleep(0)  # the loop's step ends: these are numbered and in the tail
        await asyncio.sleep(0)
        received: list[int] = []
        while len(received) < acked:
            batch = await store.next_batch("up", acked - len(received))
            assert batch is not None, "numbered readings are sendable before any commit"
            received += [r.seq for r in batch.readings]
            await store.ack(batch)
        store._journal.note_acks()
        assert store.last_seq == N and store._core.rows[Priority.TELEMETRY] == 0, "nothing is in the file yet"
        reserved = store._core.reserved_upto
        killed = tmp_path / "killed"
        shutil.copytree(live.parent, killed)
    finally:
        await store.close()
    return killed / "buffer.sqlite", reserved, received


def _rewrite_tail_header(path: Path, **changes: object) -> None:
    tail = tail_path(path)
    data = tail.read_bytes()
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    header = json.loads(data[start : start + n]) | changes
    head = json.dumps(header).encode()
    tail.write_bytes(MAGIC + struct.pack("<I", len(head)) + head + data[start + n :])


async def test_a_crash_loses_no_numbered_reading_and_numbering_goes_on_without_a_gap(tmp_path: Path) -> None:
    path, _, received = await _killed_with_readings_in_the_tail(tmp_path, acked=120)
    async with Store(path, destinations=["up"]) as store:
        assert store.last_seq == N
        kept = await store.all_readings()
        rest: list[int] = []
        while (batch := await store.next_batch("up", 1000)) is not None:
            rest += [r.seq for r in batch.readings]
            await store.ack(batch)
        store.append(_r(N))
        await store.flush()
        assert store.last_seq == N + 1
    assert received == list(range(1, 121))
    assert rest == list(range(121, N + 1)), "the acknowledgements in the tail count: nothing delivered is resent"
    assert [r.seq for r in kept] == rest
    assert [r.value for r in kept] == [round(40 + i * 0.1, 1) for i in range(120, N)]


async def test_a_record_cut_short_by_the_kill_was_never_sent_and_its_numbers_are_given_again(tmp_path: Path) -> None:
    path, _, _ = await _killed_with_readings_in_the_tail(tmp_path)
    tail = tail_path(path)
    tail.write_bytes(tail.read_bytes()[:-3])  # the last write the process was in when it died
    async with Store(path, destinations=["up"]) as store:
        kept = [r.seq for r in await store.all_readings()]
        last = store.last_seq
        store.append(_r(N))
        await store.flush()
        after = [r.seq for r in await store.all_readings()]
    assert kept == list(range(1, last + 1)) and last < N, "the whole records are kept, in order"
    assert after == list(range(1, last + 2)), "no gap"


async def test_after_a_power_cut_numbering_goes_on_above_the_reservation(tmp_path: Path) -> None:
    path, reserved, _ = await _killed_with_readings_in_the_tail(tmp_path)
    # The machine lost power: the tail was written under the boot before this one.
    _rewrite_tail_header(path, boot="00000000-0000-4000-8000-000000000000")
    async with Store(path, destinations=["up"]) as store:
        kept = [r.seq for r in await store.all_readings()]
        store.append(_r(N))
        await store.flush()
        new = store.last_seq
    assert kept == list(range(1, N + 1)), "what the tail still holds is kept"
    assert new > reserved > N, "numbers the lost seconds may have sent are never given again"


async def test_a_damaged_tail_keeps_what_precedes_the_damage_and_numbers_above_the_reservation(tmp_path: Path) -> None:
    path, reserved, _ = await _killed_with_readings_in_the_tail(tmp_path)
    tail = tail_path(path)
    data = bytearray(tail.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit in a record in the middle
    tail.write_bytes(bytes(data))
    async with Store(path, destinations=["up"]) as store:
        kept = [r.seq for r in await store.all_readings()]
        store.append(_r(N))
        await store.flush()
        new = store.last_seq
    assert kept == list(range(1, len(kept) + 1)) and 0 < len(kept) < N
    assert new > reserved


async def test_numbers_a_failing_commit_gave_are_never_seen_nor_sent(tmp_path: Path) -> None:
    """With the tail unwritable (a full disk) a commit numbers readings itself: until they
    are durable, no other number is handed out and none of them is visible or sendable."""
    path = tmp_path / "b.sqlite"
    store = Store(path, destinations=["up"], commit_interval_ms=60_000, max_pending_readings=50_000)
    await store.open()
    try:
        store.append(_r(0))
        await store.flush()
        pages = store._core.conn.execute("PRAGMA page_count").fetchone()[0]  # type: ignore[union-attr]
        await store._run(store._core.conn.execute, f"PRAGMA max_page_count = {pages}")  # type: ignore[union-attr]
        store._journal.tail.close()  # the disk refuses the tail too
        for i in range(1, 30_001):
            store.append(_r(i))
        seen: list[int] = []
        sent: dict[int, float | str | None] = {}
        flush = asyncio.create_task(store.flush())
        while not flush.done():
            seen.append(store.last_seq)
            batch = await store.next_batch("up", 100)
            if batch is not None:
                assert batch.last_seq <= store.last_seq, "only what is durable is sent"
                sent |= {r.seq: r.value for r in batch.readings}
                await store.ack(batch)
            await asyncio.sleep(0)
        assert isinstance(flush.exception(), Exception) and "disk full" in str(flush.exception())
        assert seen == sorted(seen) and seen[-1] == store.last_seq < 30_001, "the counter never went back"
        await store._run(store._core.conn.execute, "PRAGMA max_page_count = 1073741823")  # type: ignore[union-attr]
        await store.flush()
        while (batch := await store.next_batch("up", 1000)) is not None:
            sent |= {r.seq: r.value for r in batch.readings}
            await store.ack(batch)
        last = store.last_seq
    finally:
        await store.close()
    assert sorted(sent) == list(range(1, last + 1)) and last == 30_001, "each number once, without a gap"
    assert [sent[s] for s in sorted(sent)] == [round(40 + i * 0.1, 1) for i in range(30_001)], "never renumbered"


async def test_numbers_are_handed_out_only_when_their_readings_are_durable(tmp_path: Path) -> None:
    async with Store(tmp_path / "b.sqlite", destinations=["up"], commit_interval_ms=60_000) as store:
        journal = store._journal
        journal.tail.close()  # a full disk: the commit will number what waits
        for i in range(10):
            store.append(_r(i))
        taken = journal.take(store._core.budgets, 1000)
        assert taken is not None and (taken.first, taken.last) == (1, 10)
        assert store.last_seq == 0, "numbers being written are not given yet"
        journal.paused = True
        journal.tail.broken = None  # even were the tail writable again meanwhile
        assert journal.journal(store._core.budgets, 1000) is None, "nothing else is numbered meanwhile"
        journal.paused = False
        journal.tail.broken = "closed"
        await store.flush()
        assert store.last_seq == 10


async def test_with_the_tail_refused_a_kill_forgets_neither_acknowledgements_nor_numbers(tmp_path: Path) -> None:
    """A full disk refuses the tail: then the file alone must remember what was delivered and numbered."""
    live = tmp_path / "live" / "buffer.sqlite"
    store = Store(live, destinations=["up"], commit_interval_ms=60_000)
    await store.open()
    try:
        for i in range(10):
            store.append(_r(i))
        await store.flush()
        # The disk refuses the tail from here on: nothing more is appended, and no new tail can
        # be made (the name it is built under is taken), while SQLite still has free pages.
        tail_path(live).with_name(tail_path(live).name + ".new").mkdir()
        store._journal.tail.close()
        for i in range(10, 20):
            store.append(_r(i))
        await store.flush()
        batch = await store.next_batch("up", 100)
        assert batch is not None and [r.seq for r in batch.readings] == list(range(1, 21))
        await store.ack(batch)
        store.append(_r(20))
        await store.flush()  # the next commit carries the acknowledgement
        assert store._journal.tail.broken is not None, "the tail is still refused"
        shutil.copytree(live.parent, tmp_path / "killed-after-ack")
        batch = await store.next_batch("up", 100)
        assert batch is not None and [r.seq for r in batch.readings] == [21]
        await store.ack(batch)
        assert await store.prune() == 21, "every reading delivered: the file holds none"
        shutil.copytree(live.parent, tmp_path / "killed-after-prune")
    finally:
        await store.close()

    async with Store(tmp_path / "killed-after-ack" / "buffer.sqlite", destinations=["up"]) as again:
        again.append(_r(21))
        await again.flush()
        batch = await again.next_batch("up", 100)
    # The tail knew numbers up to 10 only: those above it are in the file's blocks alone.
    assert batch is not None and [r.seq for r in batch.readings] == [21, 22], (
        "delivered ones not sent again, none renumbered"
    )
    async with Store(tmp_path / "killed-after-prune" / "buffer.sqlite", destinations=["up"]) as again:
        again.append(_r(21))
        await again.flush()
        assert again.last_seq > 21, "numbers go on above every one given, though no row holds them"


async def test_with_the_disk_refusing_everything_waiting_alarms_are_never_shed(tmp_path: Path) -> None:
    """Memory is bounded while nothing can be written: the oldest telemetry goes, never an alarm."""
    path = tmp_path / "b.sqlite"
    async with Store(path, destinations=["up"], commit_interval_ms=60_000, max_pending_readings=10) as store:
        store.append(_r(0))
        await store.flush()
        pages = store._core.conn.execute("PRAGMA page_count").fetchone()[0]  # type: ignore[union-attr]
        await store._run(store._core.conn.execute, f"PRAGMA max_page_count = {pages}")  # type: ignore[union-attr]
        tail_path(path).with_name(tail_path(path).name + ".new").mkdir()
        store._journal.tail.close()
        store.append(_r(1, Priority.ALARM))  # the oldest waiting reading of all
        for i in range(2, 32):
            store.append(_r(i))
            await asyncio.sleep(0)
        stats = await store.stats()
        await store._run(store._core.conn.execute, "PRAGMA max_page_count = 1073741823")  # type: ignore[union-attr]
        await store.flush()
        kept = await store.all_readings()
    assert stats.dropped == {"telemetry": {"store_unavailable": 21}}, "31 waited for room for 10"
    assert [r.value for r in kept if r.priority is Priority.ALARM] == [_r(1).value], "the alarm was kept"
    assert [r.value for r in kept if r.priority is Priority.TELEMETRY][-9:] == [_r(i).value for i in range(23, 32)]
