"""The supervisor: the one place that wires the parts together and runs them.

Start-up is a stack of async contexts (store, uplinks, web server), then one task per
bus poller and per sync worker. Shutdown (SIGTERM/SIGINT) runs it backwards: stop
polling, let each sync worker finish its batch in flight (or abandon it after a grace
period: an unacknowledged batch is simply sent again next time), commit what is
pending, close the store, stop serving. systemd hears READY=1 once the status page
serves, STATUS= lines while running, WATCHDOG=1 only while every critical task checks
in, and STOPPING=1 at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edgeagent.clock import StepDetector
from edgeagent.config import SiteConfig, profiles_for
from edgeagent.devices import BusPoller
from edgeagent.devices.build import Runner, build_live, build_runners
from edgeagent.errors import EdgeAgentError, InvalidWrite
from edgeagent.health import Heartbeats
from edgeagent.live import DeviceState, Live, UplinkLive
from edgeagent.model import Priority, Reading
from edgeagent.notify import Notifier, watchdog_interval_s
from edgeagent.store import Budget, DestinationFilter, Store
from edgeagent.sync.worker import SyncWorker
from edgeagent.uplinks import make_uplink
from edgeagent.web.app import make_app, status_builder
from edgeagent.web.server import serve_status_page

if TYPE_CHECKING:
    from bleak.backends.scanner import BaseBleakScanner

log = logging.getLogger(__name__)

STORE_FILE = "buffer.sqlite"
SYNC_STOP_GRACE_S = 2.0
STATUS_EVERY_S = 10.0
# How long a critical task may go without checking in before the watchdog stops pinging.
CRITICAL_ALLOWANCE_S = 30.0
WEB_SHUTDOWN_S = 2.0
# Shutdown: how long to keep cancelling a task that will not stop, and how often.
CANCEL_DEADLINE_S = 5.0
CANCEL_RETRY_S = 0.2
# Slow retry after a refusal, for uplinks whose config has no setting of its own.
DEFAULT_REJECTED_RETRY_S = 300.0
# When set to "1", SIGUSR2 makes the store's commit loop hang (a watchdog test hook).
DEBUG_HANG_ENV = "EDGEAGENT_DEBUG_HANG_SIGNAL"


class Agent:
    def __init__(
        self,
        site: SiteConfig,
        *,
        notifier: Notifier | None = None,
        ble_backend: type[BaseBleakScanner] | None = None,
    ) -> None:
        self.site = site
        self.notifier = notifier or Notifier()
        # bleak's backend seam: the demo and the tests put a simulated radio here.
        self.ble_backend = ble_backend
        self.runners: dict[str, Runner] = {}  # device id -> the runner that owns its bus
        self.live = Live(gateway_id=site.gateway.id)
        self.heartbeats = Heartbeats()
        self.ready = asyncio.Event()
        self.web_url: str | None = None
        self.store: Store | None = None

    def _build_live(self) -> None:
        build_live(self.site, profiles_for(self.site), self.live)

    def _raise_alarm(self, store: Store, kind: str, message: str) -> None:
        log.error("alarm %s: %s", kind, message)
        self.live.alarms.append({"kind": kind, "message": message, "ts": time.time()})
        store.append(Reading("gateway", kind, time.time(), message, "", priority=Priority.ALARM))

    def _report_buffer(self, store: Store) -> None:
        """Damage found at start is an alarm; a buffer made new (first start, new card) an event."""
        if store.damage is not None:
            self._raise_alarm(store, "store_corrupt", f"{store.damage.kind}: {store.damage.message()}")
        elif store.created:
            message = f"new buffer {store.buffer_id}: none was found in {store.path.parent}"
            log.warning("%s", message)
            store.append(Reading("gateway", "store_created", time.time(), message, "", priority=Priority.EVENT))

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; raise if a critical task dies."""
        site = self.site
        self._build_live()
        async with AsyncExitStack() as stack:
            store = Store(
                site.gateway.state_dir / STORE_FILE,
                destinations=destination_filters(site),
                budgets=store_budgets(site),
                commit_interval_ms=site.store.commit_interval_ms,
                commit_max_readings=site.store.commit_max_readings,
                max_pending_readings=site.store.max_pending_readings,
                beat=self.heartbeats.register("store", CRITICAL_ALLOWANCE_S),
            )
            await store.open()
            stack.push_async_callback(store.close)
            self.store = store
            self._report_buffer(store)

            uplinks = [make_uplink(cfg, site.gateway.id) for cfg in site.uplinks]
            for up, cfg in zip(uplinks, site.uplinks, strict=True):
                self.live.uplinks[up.name] = UplinkLive(name=up.name, kind=cfg.kind, target=up.target)
                await up.start()
                stack.push_async_callback(up.close)

            runner = await self._start_web(store)
            if runner is not None:
                stack.push_async_callback(runner.cleanup)

            pollers = self._make_pollers(store)
            workers = [
                SyncWorker(
                    store,
                    up,
                    self.live.uplinks[up.name],
                    gateway_id=site.gateway.id,
                    batch_max_readings=cfg.batch_max_readings,
                    retry_min_s=cfg.retry_min_ms / 1000,
                    retry_max_s=cfg.retry_max_ms / 1000,
                    rejected_retry_s=getattr(cfg, "rejected_retry_s", DEFAULT_REJECTED_RETRY_S),
                    bandwidth_bytes_per_s=cfg.bandwidth_bytes_per_s,
                    beat=self.heartbeats.register(f"sync:{up.name}", CRITICAL_ALLOWANCE_S),
                )
                for up, cfg in zip(uplinks, site.uplinks, strict=True)
            ]
            poll_tasks = [asyncio.create_task(p.run(), name=f"poll:{p.name}") for p in pollers]
            sync_tasks = [asyncio.create_task(w.run(), name=f"sync:{w.uplink.name}") for w in workers]
            aux = [asyncio.create_task(self._status_loop(store), name="status")]
            interval = watchdog_interval_s()
            if interval:
                aux.append(asyncio.create_task(self._watchdog_loop(interval), name="watchdog"))

            if os.environ.get(DEBUG_HANG_ENV) == "1":
                # Test hook for the systemd watchdog: SIGUSR2 really hangs a critical task.
                asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, store.debug_hang)
            self.ready.set()
            self.notifier.ready(await self._summary(store))
            log.info(
                "edgeagent %s running: %d devices on %d buses, %d uplinks%s",
                site.gateway.id,
                len(site.devices),
                len(pollers),
                len(uplinks),
                f", status page {self.web_url}" if self.web_url else "",
            )
            stopper = asyncio.create_task(stop.wait(), name="stop")
            critical = set(poll_tasks) | set(sync_tasks)
            try:
                done, _ = await asyncio.wait({stopper, *critical}, return_when=asyncio.FIRST_COMPLETED)
                failed = [t for t in done if t is not stopper]
                self.notifier.stopping()
                log.info("stopping")
                await _cancel_all(poll_tasks)
                for w in workers:
                    w.stop()
                _, late = await asyncio.wait(sync_tasks, timeout=SYNC_STOP_GRACE_S) if sync_tasks else ((), ())
                if late:
                    log.info(
                        "abandoning %d upload(s) in flight; they are sent again next start",
                        len(late),
                    )
                await _cancel_all([*late, *aux, stopper])
                for t in failed:
                    if not t.cancelled() and t.exception() is not None:
                        raise EdgeAgentError(f"critical task {t.get_name()} died") from t.exception()
            finally:
                await _cancel_all([*poll_tasks, *sync_tasks, *aux, stopper])

    async def _start_web(self, store: Store) -> web.AppRunner | None:
        cfg = self.site.web
        if not cfg.enabled:
            return None
        app = make_app(status_builder(self.live, store), allowed_hosts=cfg.allowed_hosts)
        # A phone polling the page must not hold up a stop: in-flight requests get 2 s.
        runner = await serve_status_page(app, cfg, shutdown_timeout_s=WEB_SHUTDOWN_S)
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        self.web_url = f"http://{shown}:{port}/"
        return runner

    def _make_pollers(self, store: Store) -> list[Runner]:
        def on_readings(readings: list[Reading]) -> None:
            for r in readings:
                store.append(r)

        runners = build_runners(
            self.site,
            profiles_for(self.site),
            self.live,
            on_readings,
            beat_for=lambda bus: self.heartbeats.register(f"bus:{bus}", CRITICAL_ALLOWANCE_S),
            on_alarm=lambda kind, message: self._raise_alarm(store, kind, message),
            ble_backend=self.ble_backend,
        )
        self.runners = {device_id: r for r in runners for device_id in r.device_ids}
        return runners

    async def write_point(self, device_id: str, point: str, value: float | str) -> str:
        """Write one point of a device through its bus's scheduler (for rules); return what was written."""
        runner = self.runners.get(device_id)
        if not isinstance(runner, BusPoller):
            raise InvalidWrite(f"no writable device {device_id!r} is running")
        return await runner.write(device_id, point, value)

    async def _summary(self, store: Store) -> str:
        devices = self.live.devices.values()
        online = sum(1 for d in devices if d.state == DeviceState.ONLINE)
        stats = await store.stats()
        backlog = max(stats.unsent.values(), default=0)
        links = ", ".join(f"{u.name} {u.last_result.split(':')[0]}" for u in self.live.uplinks.values())
        return f"{online}/{len(devices)} devices online; backlog {backlog}; {links or 'no uplinks'}"

    async def _status_loop(self, store: Store) -> None:
        steps = StepDetector()
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            steps.check()
            self.notifier.status(await self._summary(store))

    async def _watchdog_loop(self, interval_s: float) -> None:
        reported: list[str] = []
        while True:
            stale = self.heartbeats.stale()
            if not stale:
                self.notifier.watchdog()
            elif stale != reported:
                log.error("not pinging the watchdog: %s stopped checking in", ", ".join(stale))
            reported = stale
            await asyncio.sleep(interval_s)


def destination_filters(site: SiteConfig) -> dict[str, DestinationFilter]:
    """Each uplink's share: its priority classes, and the devices carrying one of its tags."""
    filters = {}
    for up in site.uplinks:
        classes = frozenset(Priority[name.upper()] for name in up.classes)
        devices = None
        if up.device_tags:
            wanted = set(up.device_tags)
            devices = frozenset(d.id for d in site.devices if wanted & set(d.tags))
        filters[up.name] = DestinationFilter(classes=classes, devices=devices)
    return filters


def store_budgets(site: SiteConfig) -> dict[Priority, Budget]:
    cfg = site.store
    return {
        prio: Budget(b.max_bytes, b.policy, b.thin_keep_every)
        for prio, b in ((Priority.ALARM, cfg.alarm), (Priority.EVENT, cfg.event), (Priority.TELEMETRY, cfg.telemetry))
    }


async def _cancel_all(tasks: list[asyncio.Task[Any]], deadline_s: float = CANCEL_DEADLINE_S) -> None:
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


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
