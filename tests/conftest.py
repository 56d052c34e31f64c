from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import RainEvent, WaterLevelSimulator


@pytest.fixture
async def sensor() -> AsyncIterator[WaterLevelSimulator]:
    async with WaterLevelSimulator(unit_ids=[1], rain=RainEvent(period_s=10.0, start_phase=0.2, seed=7)) as sim:
        yield sim


@pytest.fixture
async def ingest() -> AsyncIterator[IngestServer]:
    async with IngestServer() as server:
        yield server


@pytest.fixture(autouse=True)
async def _no_leftover_tasks() -> AsyncIterator[None]:
    """A test must not leave tasks running behind it (they would leak into the next)."""
    before = asyncio.all_tasks()
    yield
    left = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    if left:  # tasks being cancelled get a moment to finish
        await asyncio.wait(left, timeout=1.0)
    left = [t for t in left if not t.done()]
    names = sorted(t.get_name() for t in left)
    for t in left:
        t.cancel()
    assert not left, f"tasks left running: {names}"
