"""The health window after an apply: does the gateway still do its job with the new config?

Four things are watched, and only what the new config could have broken:

- every device the apply started or changed answers (a poll, a frame, an advertisement);
- the store commits (the apply's own ``config_applied`` event is a write to see);
- each uplink that was delivering before the apply acknowledges a batch after it. An
  uplink that was already down is not asked (an unrelated outage must not undo a good
  config), and one that had nothing to send by the end of the window is not blamed;
- rules compile (they are checked before the apply; a rules engine that reports a
  failure at start is seen here through its alarm, when there is one).

The window ends as soon as everything answered, or after ``health_window_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from edgeagent.live import Live, UplinkLive

POLL_S = 0.1


def delivering(uplink: UplinkLive) -> bool:
    """Its last attempt was acknowledged (what "up" means for the window)."""
    return uplink.last_success_ts is not None and uplink.last_result.startswith("ok")


@dataclass(frozen=True, slots=True)
class Before:
    """What is noted just before an apply, to judge it after."""

    at: float
    uplinks_up: frozenset[str]


def before(live: Live) -> Before:
    return Before(time.time(), frozenset(name for name, u in live.uplinks.items() if delivering(u)))


def _silent(live: Live, devices: Collection[str], since: float) -> list[str]:
    out = []
    for dev_id in sorted(devices):
        d = live.devices.get(dev_id)
        if d is not None and (d.last_ok_ts is None or d.last_ok_ts < since):
            out.append(dev_id)
    return out


def _unacknowledged(live: Live, names: Collection[str], since: float) -> list[UplinkLive]:
    out = []
    for name in sorted(names):
        u = live.uplinks.get(name)
        if u is not None and (u.last_success_ts is None or u.last_success_ts < since):
            out.append(u)
    return out


async def watch(
    live: Callable[[], Live],
    changed: Collection[str],
    noted: Before,
    committed: asyncio.Event,
    window_s: float,
) -> str | None:
    """None when the apply is healthy; otherwise what failed, in words for the report."""
    deadline = time.monotonic() + window_s
    while True:
        now = live()
        silent = _silent(now, changed, noted.at)
        waiting = _unacknowledged(now, noted.uplinks_up, noted.at)
        if not silent and not waiting and committed.is_set():
            return None
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL_S)
    problems = []
    if silent:
        problems.append(f"no answer within {window_s:g} s from {', '.join(silent)}")
    if not committed.is_set():
        problems.append(f"the store committed nothing within {window_s:g} s")
    # An uplink that tried and failed is blamed; one with nothing to send is not.
    failed = [u for u in waiting if u.last_attempt_ts is not None and u.last_attempt_ts >= noted.at]
    for u in failed:
        problems.append(f"uplink {u.name} delivered before the apply and not since ({u.last_result})")
    return "; ".join(problems) or None
