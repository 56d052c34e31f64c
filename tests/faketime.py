"""A wrong wall clock for one child process, with libfaketime, that the test can step.

The child gets libfaketime preloaded and reads its offset from a file on every call
(``FAKETIME_NO_CACHE=1``), so rewriting the file steps its wall clock at once, as NTP
does. ``FAKETIME_DONT_FAKE_MONOTONIC=1`` leaves CLOCK_MONOTONIC and CLOCK_BOOTTIME real
(checked by ``FakeClock.probe``), as they are on a gateway whose wall clock is wrong.

The multi-threaded build is preloaded: the agent reads the clock from its store and
executor threads too. One quirk of libfaketime 0.9.10 with this setup: ``time.sleep``
(an absolute ``clock_nanosleep`` on CLOCK_MONOTONIC) hangs or fails with EINVAL, so a
child must not use it; the agent sleeps only through asyncio, which is unaffected.

Without libfaketime the test is skipped, except under CI (``CI=true``), where
``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SEARCH = ("/usr/lib/*/faketime", "/usr/lib/faketime", "/usr/local/lib/faketime", "/usr/local/lib")
LIBRARY = "libfaketimeMT.so.1"
# The agent's clock in phase "1970": ten minutes after the epoch when the test starts.
EPOCH_START_S = 600


def libfaketime() -> Path:
    """The preload library's path; skip without it (fail under CI, which installs it)."""
    for pattern in SEARCH:
        for folder in sorted(Path("/").glob(pattern.lstrip("/"))):
            if (folder / LIBRARY).exists():
                return folder / LIBRARY
    reason = f"{LIBRARY} is not installed (apt-get install faketime libfaketime); .ci/run installs it"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


class FakeClock:
    """The child's wall clock: the real one plus an offset kept in a file."""

    def __init__(self, folder: Path) -> None:
        self.library = libfaketime()
        self.file = folder / "faketime.rc"
        self.offset_s = 0
        self.set_offset(0)

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(self.library),
            "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def set_offset(self, offset_s: int) -> None:
        """Step the child's clock: replaced whole, so the child never reads half a file."""
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(f"{offset_s:+d}\n")
        os.replace(tmp, self.file)
        self.offset_s = offset_s

    def set_1970(self) -> None:
        """The clock of a gateway that booted without a battery-backed clock."""
        self.set_offset(EPOCH_START_S - int(time.time()))

    def right(self) -> None:
        """NTP answered."""
        self.set_offset(0)

    def probe(self) -> tuple[float, float]:
        """(wall, since boot) as a preloaded child sees them now; fails unless only the wall clock is faked."""
        code = "import time; print(time.time(), time.clock_gettime(time.CLOCK_BOOTTIME))"
        real_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        done = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, **self.env()}, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        wall, since_boot = (float(x) for x in done.stdout.split())
        assert abs(wall - (time.time() + self.offset_s)) < 5, f"libfaketime did not fake the wall clock: {wall}"
        assert abs(since_boot - real_boot) < 5, f"libfaketime faked CLOCK_BOOTTIME too: {since_boot} vs {real_boot}"
        return wall, since_boot
