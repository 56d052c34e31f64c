"""Store ingest: readings/s committed and disk bytes written per reading, by commit batch size.

Bytes come from /proc/self/io (write_bytes: what this process sent towards the block
device, including the WAL and its checkpoints into the main file), so they measure SD
card wear, not just file growth. Run: python bench/ingest.py [--readings N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import make_readings, write_bytes

from edgeagent.store import open_core_for_bench


def run(batch: int, total: int, folder: Path) -> tuple[float, float]:
    path = folder / f"bench-{batch}.sqlite"
    core = open_core_for_bench(path)
    readings = make_readings(total)
    # Warm up: series interned and first pages allocated, as in a running agent.
    core.commit(readings[:batch])
    before = write_bytes()
    started = time.perf_counter()
    for i in range(batch, total, batch):
        core.commit(readings[i : i + batch])
    elapsed = time.perf_counter() - started
    core.close()  # includes the final checkpoint into the main file
    written = write_bytes() - before
    n = total - batch
    return n / elapsed, written / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=200_000, help="readings per run (batch 1 uses 1/20)")
    parser.add_argument("--dir", type=Path, help="folder on the disk to measure (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeagent-bench-", dir=args.dir) as tmp:
        print(f"store ingest, {args.readings} readings per run, in {tmp}")
        print(f"{'commit batch':>12} {'readings/s':>12} {'bytes/reading':>14}")
        for batch in (1, 10, 100, 1000):
            total = max(2_000, args.readings // 20) if batch == 1 else args.readings
            rate, per = run(batch, total, Path(tmp))
            print(f"{batch:>12} {rate:>12,.0f} {per:>14.1f}")


if __name__ == "__main__":
    main()
