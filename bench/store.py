"""The buffer as the agent uses it: readings appended one by one, committed in batches.

Prints readings/s through ``Store.append`` + the commit path (one core: the store's own
thread does the SQLite work while the loop appends), and disk bytes written per reading
(/proc/self/io), for the default commit batch of 1000 and for time-based commits.
Targets: at least 100,000 readings/s; at most 64 bytes per reading.
Run: python bench/store.py [--readings N]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _common import make_readings, write_bytes

from edgeagent.store import Store


async def run(folder: Path, total: int, commit_max: int) -> tuple[float, float]:
    readings = make_readings(total)
    async with Store(folder / f"s-{commit_max}.sqlite", destinations=["up"], commit_max_readings=commit_max) as store:
        for r in readings[:commit_max]:  # warm-up: series known, first pages allocated
            store.append(r)
        await store.flush()
        before = write_bytes()
        started = time.perf_counter()
        for i, r in enumerate(readings[commit_max:], 1):
            store.append(r)
            if i % commit_max == 0:
                await store.flush()
        await store.flush()
        elapsed = time.perf_counter() - started
    written = write_bytes() - before  # includes the final checkpoint at close
    n = total - commit_max
    return n / elapsed, written / n


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=500_000)
    parser.add_argument("--dir", type=Path, help="folder on the disk to measure (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeagent-bench-", dir=args.dir) as tmp:
        print(f"store through the async API, {args.readings} readings")
        print(f"{'commit batch':>12} {'readings/s':>12} {'bytes/reading':>14}")
        for commit_max in (100, 1000, 5000):
            rate, per = await run(Path(tmp), args.readings, commit_max)
            print(f"{commit_max:>12} {rate:>12,.0f} {per:>14.1f}")


if __name__ == "__main__":
    asyncio.run(main())
