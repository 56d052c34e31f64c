"""Write tests/vectors/buffer_v2.sqlite: a buffer in the previous format (one row per reading).

The file was made by the store of commit ee1907e (schema step 2), through its own API,
so it is exactly what a gateway running that version leaves on its card:

    git archive ee1907e src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src .venv-test/bin/python tests/vectors/make_buffer_v2.py

It holds every kind of reading the old format knew (scaled integers, floats, missing
values, qualities, text values with a reason, boot-relative times of another boot),
the three classes, a destination ``up`` that acknowledged part of it, rows pruned away
(so the counter lives in ``meta``), events dropped under a small budget (so the drop
counters are set), and it was closed cleanly. tests/test_store_migration.py upgrades a
copy in place and drains it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import edgeagent.store.core
from edgeagent.model import Priority, Quality, Reading
from edgeagent.store import Budget, Store

OUT = Path(__file__).with_name("buffer_v2.sqlite")
OTHER_BOOT = "5b1e1d3a-0000-4000-8000-00000000b007"
T0 = 1_767_225_600.0


def readings(start: int, n: int) -> list[Reading]:
    out = []
    for i in range(start, start + n):
        ts = T0 + i * 0.25
        if i % 97 == 0:
            out.append(Reading("wl-01", "water_level", ts, None, "mm", Quality.MISSING))
        elif i % 101 == 0:
            out.append(Reading("vis-01", "visibility", ts, 1 / 3 + i, "m", Quality.UNCERTAIN))
        elif i % 50 == 0:
            text = "online" if i % 100 else "offline"
            out.append(Reading("wl-01", "state", ts, text, "", priority=Priority.EVENT, reason=f"poll {i}"))
        elif i % 333 == 0:
            out.append(
                Reading("gateway", "water_high", ts, "active", "", priority=Priority.ALARM, reason="above 300 mm")
            )
        else:
            out.append(Reading("wl-01", "water_level", ts, round(40 + (i % 400) * 0.1, 1), "mm"))
    return out


async def main() -> None:
    # Readings of another boot, taken before that boot's clock was set, keep their boot id.
    edgeagent.store.core.boot_id = lambda: OTHER_BOOT  # type: ignore[attr-defined]
    budgets = {
        Priority.ALARM: Budget(1 << 20, "reject_new"),
        Priority.EVENT: Budget(400, "drop_oldest"),
        Priority.TELEMETRY: Budget(8 << 20, "drop_oldest"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "buffer.sqlite"
        async with Store(path, destinations=["up"], budgets=budgets, commit_max_readings=500) as store:
            for r in readings(1, 1500):
                store.append(r)
            for up in (11.5, 12.0, 12.75):  # seconds since that boot
                store.append(Reading("wl-01", "water_level", up, 41.5, "mm", boot_relative=True))
            await store.flush()
            # "up" acknowledged the alarms and the oldest telemetry; those rows were pruned.
            while (batch := await store.next_batch("up", 200)) is not None and batch.priority != Priority.TELEMETRY:
                await store.ack(batch)
            for _ in range(3):
                batch = await store.next_batch("up", 200)
                assert batch is not None
                await store.ack(batch)
            await store.prune()
            for r in readings(1500, 700):
                store.append(r)
            await store.flush()
        shutil.copyfile(path, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    asyncio.run(main())
