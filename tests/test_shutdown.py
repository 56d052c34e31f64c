"""Shutdown stays bounded even when a task swallows a cancellation (as 3.11's wait_for can)."""

from __future__ import annotations

import asyncio
import time

import pytest

from edgeagent.units import cancel_all as _cancel_all


async def test_a_task_that_swallows_one_cancel_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed == 0:
                    swallowed += 1  # what wait_for does when the result races the cancel
                    continue
                raise

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    started = time.monotonic()
    await _cancel_all([task])
    assert task.cancelled() and swallowed == 1
    assert time.monotonic() - started < 2


async def test_a_task_that_never_stops_is_reported_and_left(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def immortal() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(immortal(), name="immortal")
    await asyncio.sleep(0)
    await _cancel_all([task], deadline_s=0.5)
    assert not task.done()
    assert "did not stop" in caplog.text and "immortal" in caplog.text
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1)
