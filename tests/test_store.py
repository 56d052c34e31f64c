"""The buffer on a real SQLite file: sequence numbers, cursors, pruning, restart, corruption."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
from pathlib import Path

from edgeagent.model import Priority, Quality, Reading
from edgeagent.store import Store


def _r(i: int, priority: Priority = Priority.TELEMETRY, value: float | None = None) -> Reading:
    return Reading("dev", "p", 1_700_000_000 + i * 0.001, float(i) if value is None else value, "mm", priority=priority)


async def test_sequence_numbers_are_gapless_and_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    async with Store(path, destinations=["up"], commit_max_readings=7) as store:
        for i in range(20):
            store.append(_r(i))
        await store.flush()
        assert store.last_seq == 20
    async with Store(path, destinations=["up"]) as store:
        for i in range(20, 25):
            store.append(_r(i))
        await store.flush()
        rows = await store.all_readings()
    assert [r.seq for r in rows] == list(range(1, 26))
    assert [r.value for r in rows] == [float(i) for i in range(25)]


async def test_values_round_trip_with_quality_and_missing(tmp_path: Path) -> None:
    async with Store(tmp_path / "b.sqlite", destinations=["up"]) as store:
        store.append(Reading("d", "vis", 1_700_000_001.5, None, "m", Quality.MISSING))
        store.append(Reading("d", "lvl", 1_700_000_002.25, 12.5, "mm"))
        await store.flush()
        batch = await store.next_batch("up", 10)
    assert batch is not None
    (a, b) = batch.readings
    assert (a.point, a.value, a.quality, a.ts) == ("vis", None, Quality.MISSING, 1_700_000_001.5)
    assert (b.point, b.value, b.unit, b.ts) == ("lvl", 12.5, "mm", 1_700_000_002.25)


async def test_ack_advances_cursor_and_prune_keeps_unacked(tmp_path: Path) -> None:
    async with Store(tmp_path / "b.sqlite", destinations=["a", "b"]) as store:
        for i in range(10):
            store.append(_r(i))
        await store.flush()
        batch = await store.next_batch("a", 4)
        assert batch is not None and (batch.first_seq, batch.last_seq) == (1, 4)
        await store.ack(batch)
        nxt = await store.next_batch("a", 4)
        assert nxt is not None and nxt.first_seq == 5
        assert await store.prune() == 0  # "b" has not acknowledged anything
        b_batch = await store.next_batch("b", 6)
        assert b_batch is not None
        await store.ack(b_batch)
        assert await store.prune() == 4  # both have 1-4
        stats = await store.stats()
        assert stats.unsent == {"a": 6, "b": 4}


async def test_sequence_numbers_never_reused_after_everything_is_pruned(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    async with Store(path, destinations=["up"]) as store:
        for i in range(5):
            store.append(_r(i))
        await store.flush()
        batch = await store.next_batch("up", 100)
        assert batch is not None
        await store.ack(batch)
        assert await store.prune() == 5
    async with Store(path, destinations=["up"]) as store:
        store.append(_r(99))
        await store.flush()
        batch = await store.next_batch("up", 100)
    assert batch is not None and [r.seq for r in batch.readings] == [6]


async def test_alarms_are_sent_before_older_telemetry(tmp_path: Path) -> None:
    async with Store(tmp_path / "b.sqlite", destinations=["up"]) as store:
        for i in range(3):
            store.append(_r(i))
        store.append(_r(3, Priority.ALARM))
        await store.flush()
        first = await store.next_batch("up", 100)
        assert first is not None and first.priority == Priority.ALARM and first.first_seq == 4
        await store.ack(first)
        second = await store.next_batch("up", 100)
        assert second is not None and [r.seq for r in second.readings] == [1, 2, 3]


async def test_cursor_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    async with Store(path, destinations=["up"]) as store:
        for i in range(6):
            store.append(_r(i))
        await store.flush()
        batch = await store.next_batch("up", 3)
        assert batch is not None
        await store.ack(batch)
    async with Store(path, destinations=["up"]) as store:
        batch = await store.next_batch("up", 100)
        stats = await store.stats()
    assert batch is not None and [r.seq for r in batch.readings] == [4, 5, 6]
    assert stats.unsent == {"up": 3}


async def test_corrupt_file_is_moved_aside_and_a_fresh_store_opens(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    async with Store(path, destinations=["up"]) as store:
        for i in range(2000):
            store.append(_r(i))
        await store.flush()
    data = bytearray(path.read_bytes())
    data[4096 : 4096 * 3] = b"\xde\xad\xbe\xef" * 2048  # overwrite two pages
    path.write_bytes(bytes(data))
    async with Store(path, destinations=["up"]) as store:
        assert store.moved_aside is not None and store.damage is not None
        store.append(_r(0))
        await store.flush()
        # Numbering goes on above the highest number still known: never reused.
        assert store.last_seq == 2001
    aside = Path(store.moved_aside)
    assert aside.exists() and aside.read_bytes() == bytes(data)


async def test_a_damaged_page_no_start_up_read_touches_is_found_at_open_not_at_the_first_send(
    tmp_path: Path,
) -> None:
    """A block's overflow page holds only readings waiting to be sent: opening never reads it, the check does."""
    path = tmp_path / "b.sqlite"
    rng = random.Random(3)
    async with Store(path, destinations=["up"], commit_max_readings=5000) as store:
        for i in range(5000):  # values that do not compress: one block spilling over several pages
            store.append(Reading("wl-01", "water_level", 1_800_000_000 + i * 0.1, rng.uniform(0, 1000), "mm"))
        await store.flush()
    with sqlite3.connect(path) as conn:
        overflow = [n for (n,) in conn.execute("SELECT pageno FROM dbstat WHERE pagetype = 'overflow' ORDER BY 1")]
    assert len(overflow) >= 3
    data = bytearray(path.read_bytes())
    page = overflow[len(overflow) // 2] - 1
    data[page * 4096 : (page + 1) * 4096] = b"\xa5" * 4096
    path.write_bytes(bytes(data))
    async with Store(path, destinations=["up"]) as store:
        assert store.damage is not None and store.moved_aside is not None, "found before any use of the file"
    assert Path(store.moved_aside).read_bytes() == bytes(data), "moved aside exactly as found"


async def test_pending_readings_are_committed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    store = Store(path, destinations=["up"], commit_interval_ms=60_000)
    await store.open()
    store.append(_r(1))
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT sum(count) FROM blocks_telemetry").fetchone()[0] == 1


async def test_state_folder_and_buffer_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Outside the packaged unit (no UMask=, no StateDirectoryMode=) nobody else may read the buffer."""
    state = tmp_path / "var" / "state"
    old = os.umask(0)  # the most permissive a shell could have
    try:
        async with Store(state / "b.sqlite", destinations=["up"]) as store:
            for i in range(10):
                store.append(_r(i))
            await store.flush()
            files = sorted(p.name for p in state.iterdir())
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
        # A damaged buffer's salvage and the marker of its recovery are private too.
        (state / "b.sqlite").write_bytes(b"SQLite format 3\x00" + b"\x5a" * 8192)
        async with Store(state / "b.sqlite", destinations=["up"]) as store:
            assert store.damage is not None
            later = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert files == ["b.sqlite", "b.sqlite-shm", "b.sqlite-tail", "b.sqlite-wal"]
    assert set(modes.values()) == {0o600}, modes
    assert set(later.values()) == {0o600}, later
