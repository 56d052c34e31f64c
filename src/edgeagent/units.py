"""Units: the parts of the agent that start, stop and are replaced on their own.

Each bus runner, each uplink with its sync worker, and the status page is a unit with
its own slice of the config. The agent supervises them: it starts them, watches their
tasks, and on a reload stops and starts only the units whose slice changed (aiohttp's
runner/site split is the model: a part is set up, started and cleaned up as one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from edgeagent.devices.build import Runner
    from edgeagent.sync.worker import SyncWorker
    from edgeagent.uplinks import Uplink

log = logging.getLogger(__name__)

SYNC_STOP_GRACE_S = 2.0
# Shutdown: how long to keep cancelling a task that will not stop, and how often.
CANCEL_DEADLINE_S = 5.0
CANCEL_RETRY_S = 0.2


class Unit(Protocol):
    name: str
    # What the unit was built from: equal slices mean nothing to restart on a reload.
    slice: Hashable

    @property
    def task(self) -> asyncio.Task[Any] | None:
        """The task to watch; when it ends on its own, the unit has failed."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class BusUnit:
    """One bus's runner (a poller, a radar reader, a BLE listener) as a task."""

    def __init__(self, runner: Runner, slice_: Hashable, on_stop: Callable[[], None] | None = None) -> None:
        self.name = f"bus:{runner.name}"
        self.runner = runner
        self.slice = slice_
        self._on_stop = on_stop
        self._task: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def start(self) -> None:
        self._task = asyncio.create_task(self.runner.run(), name=f"poll:{self.runner.name}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])
            self._task = None
        if self._on_stop is not None:
            self._on_stop()


class UplinkUnit:
    """One destination: its uplink client and the sync worker that feeds it."""

    def __init__(self, uplink: Uplink, make_worker: Callable[[Uplink], SyncWorker], slice_: Hashable) -> None:
        self.name = f"uplink:{uplink.name}"
        self.uplink = uplink
        self.slice = slice_
        self._make_worker = make_worker
        self.worker: SyncWorker | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def start(self) -> None:
        await self.uplink.start()
        self.worker = self._make_worker(self.uplink)
        self._task = asyncio.create_task(self.worker.run(), name=f"sync:{self.uplink.name}")

    async def stop(self) -> None:
        """Let the batch in flight finish (or abandon it: it is sent again later), then close."""
        if self._task is not None and self.worker is not None:
            self.worker.stop()
            _, late = await asyncio.wait({self._task}, timeout=SYNC_STOP_GRACE_S)
            if late:
                log.info("abandoning 1 upload in flight on uplink %s; it is sent again later", self.uplink.name)
            await cancel_all([self._task])
            self._task = None
        await self.uplink.close()


class WebUnit:
    """The status page: an aiohttp runner and its site."""

    def __init__(self, serve: Callable[[], Awaitable[web.AppRunner]], slice_: Hashable) -> None:
        self.name = "web"
        self.slice = slice_
        self._serve = serve
        self.runner: web.AppRunner | None = None

    @property
    def task(self) -> None:
        return None

    async def start(self) -> None:
        self.runner = await self._serve()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def cancel_all(tasks: list[asyncio.Task[Any]], deadline_s: float = CANCEL_DEADLINE_S) -> None:
    """Cancel tasks and wait until they have stopped, cancelling again as needed.

    Once is not always enough: on Python 3.11 ``asyncio.wait_for`` (which libraries use
    inside, pymodbus among them) swallows a cancellation that arrives as its result
    does, and the task runs on. Asking again until the task ends, within a deadline,
    keeps shutdown bounded. A task that had failed on its own is logged, not hidden.
    """
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + deadline_s
    while pending and time.monotonic() < deadline:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_RETRY_S)
    if pending:
        log.error("tasks did not stop within %.0f s: %s", deadline_s, ", ".join(sorted(t.get_name() for t in pending)))
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.error("task %s failed: %r", t.get_name(), t.exception())
