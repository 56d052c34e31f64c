"""What the agent knows about the wall clock, and how it times readings without one.

Gateways without a battery-backed clock boot in 1970 and step to the right time when
NTP answers, minutes or hours later. A reading stamped in that window must not go
upstream with a false date (SenML reads times below 2**28 as relative to "now", so
a 1970 time is misread by a standard receiver). So:

- a wall time earlier than ``PLAUSIBLE_FROM`` is not a time at all: the store keeps such
  a reading's time as seconds since boot (``CLOCK_BOOTTIME``) with the boot id, which is
  exact whatever the wall clock does, and re-times it once the clock is plausible;
- whether the kernel's clock is NTP-synchronised is read from ``adjtimex`` exactly as
  ``timedatectl`` reads it for "System clock synchronized", for the status page,
  ``doctor`` and anything that must not trust a free-running clock (expiry of pushed
  configs);
- a step of the wall clock (its offset from the boot clock jumps) is logged once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

# 2020-01-01T00:00:00Z: no reading of this software can be older, so a wall clock
# before it has not been set (systemd uses the same idea, its "epoch" floor).
PLAUSIBLE_FROM = 1_577_836_800.0
# SenML (RFC 8428, 4.5.3): times below this are relative to now, never absolute.
SENML_RELATIVE_BELOW = 2**28
STEP_THRESHOLD_S = 1.0
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
# systemd-timedated's test: the kernel's maximum error is below its 16 s ceiling. The
# kernel raises it 500 us a second until an NTP daemon lowers it again, so a clock left
# unsynchronised for about nine hours stops counting. STA_UNSYNC is not read: chrony
# without ``rtcsync`` sets it on purpose, to keep the kernel from writing the RTC.
MAX_SYNCED_ERROR_US = 16_000_000


def boot_clock() -> float:
    """Seconds since boot, counting suspend; never steps with the wall clock.

    (libfaketime leaves it alone with ``FAKETIME_DONT_FAKE_MONOTONIC=1``, as it does
    CLOCK_MONOTONIC, which is what tests/test_clock.py relies on.)
    """
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@cache
def boot_id() -> str:
    """The kernel's id of this boot (a UUID); seconds since boot mean something only with it."""
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return "unknown"


def plausible(wall_s: float) -> bool:
    return wall_s >= PLAUSIBLE_FROM


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>: the fields up to ``status``, then room for the rest.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


def kernel_synchronized() -> bool | None:
    """True when NTP (or PTP) keeps the kernel's clock, as ``timedatectl`` says; None when unknown."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()  # modes 0: read only, no privilege needed
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return bool(tx.maxerror < MAX_SYNCED_ERROR_US)


@dataclass(frozen=True, slots=True)
class ClockState:
    """One look at the clock: what the status page and doctor show."""

    wall: float
    plausible: bool
    synchronized: bool | None
    boot_id: str

    def as_dict(self) -> dict[str, object]:
        return {
            "plausible": self.plausible,
            "synchronized": self.synchronized,
            "boot_id": self.boot_id,
        }


def clock_state() -> ClockState:
    wall = time.time()
    return ClockState(wall, plausible(wall), kernel_synchronized(), boot_id())


class StepDetector:
    """Notices the wall clock stepping against the boot clock (NTP, an operator, a bad RTC)."""

    def __init__(self) -> None:
        self.offset = time.time() - boot_clock()
        self.steps = 0

    def check(self) -> float | None:
        """The size of a step since the last check, in seconds, or None."""
        offset = time.time() - boot_clock()
        step = offset - self.offset
        self.offset = offset
        if abs(step) < STEP_THRESHOLD_S:
            return None
        self.steps += 1
        log.warning("the wall clock stepped by %+.1f s", step)
        return step
