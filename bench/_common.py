"""Shared by the benchmark scripts (run as ``python bench/NAME.py``)."""

from __future__ import annotations

import random
import time
from pathlib import Path

from edgeagent.model import Reading


def write_bytes() -> int:
    """Bytes this process has sent towards the block device (/proc/self/io write_bytes)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_readings(n: int, start: int = 0) -> list[Reading]:
    """A realistic mix: 10 devices x 5 points, millisecond times, one-decimal values."""
    rng = random.Random(start)
    t0 = time.time()
    return [
        Reading(f"dev-{i % 10:02d}", f"point_{i % 5}", t0 + i * 0.001, round(rng.uniform(0, 500), 1), "mm")
        for i in range(start, start + n)
    ]
