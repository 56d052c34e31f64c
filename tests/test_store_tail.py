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
