"""The supervisor: the one place that wires the parts together, runs them, and reloads them.

The store and the hub live as long as the process; everything else is a unit (see
``units.py``): a runner per bus, an uplink with its sync worker per destination, the
status page. Readings, device states, bus states, uplink results and alarms go
through the hub, and the store, the live picture and the upstream events listen there.

SIGHUP (``systemctl reload``) re-reads the config, validates it exactly as
``check-config`` does, and applies the difference: only units whose slice changed are
restarted, and devices added to, changed on or removed from a running polled bus are
swapped in place, so their neighbours keep their rhythm. A config that fails changes
nothing. Either outcome is logged, shown on the status page, and sent upstream.

Shutdown (SIGTERM/SIGINT) runs it backwards: stop polling, let each sync worker finish
its batch in flight (or abandon it after a grace period: an unacknowledged batch is
simply sent again), commit what is pending, close the store, stop serving. systemd
hears READY=1 once the status page serves, RELOADING=1 while a reload is applied,
STATUS= lines while running, WATCHDOG=1 only while every critical task checks in, and
STOPPING=1 at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeagent.clock import StepDetector
from edgeagent.config import SiteConfig, profiles_for
from edgeagent.devices.build import Runner, build_live, build_runner, bus_live_of, device_live_of
from edgeagent.errors import ConfigError, EdgeAgentError, InvalidWrite, StoreError
from edgeagent.health import Heartbeats
from edgeagent.hub import AlarmTransition, DeviceStateChange, Hub, ReadingsBatch, Topic
from edgeagent.live import DeviceState, Live, UplinkLive
from edgeagent.model import Priority, Reading
from edgeagent.notify import Notifier, watchdog_interval_s
from edgeagent.reload import ConfigState, Plan, config_hash, plan_reload
from edgeagent.rules.unit import RulesUnit
from edgeagent.store import Budget, DestinationFilter, Store
from edgeagent.units import BusUnit, Unit, UplinkUnit, WebUnit, cancel_all

if TYPE_CHECKING:
    from aiohttp import web
    from bleak.backends.scanner import BaseBleakScanner

    from edgeagent.sync.worker import SyncWorker
    from edgeagent.uplinks import Uplink

log = logging.getLogger(__name__)

STORE_FILE = "buffer.sqlite"
STATUS_EVERY_S = 10.0
# How long a critical task may go without checking in before the watchdog stops pinging.
CRITICAL_ALLOWANCE_S = 30.0
WEB_SHUTDOWN_S = 2.0
# Slow retry after a refusal, for uplinks whose config has no setting of its own.
DEFAULT_REJECTED_RETRY_S = 300.0
# When set to "1", SIGUSR2 makes the store's commit loop hang (a watchdog test hook).
DEBUG_HANG_ENV = "EDGEAGENT_DEBUG_HANG_SIGNAL"
GATEWAY = "gateway"  # the device name of the gateway's own readings
MAX_REASON_CHARS = 1000


class Agent:
    def __init__(
        self,
        site: SiteConfig,
        *,
        notifier: Notifier | None = None,
        ble_backend: type[BaseBleakScanner] | None = None,
        config_path: Path | None = None,
        fleet_version: int | None = None,
        fleet_clock: Callable[[], bool | None] | None = None,
    ) -> None:
        self.site = site
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        # bleak's backend seam: the demo and the tests put a simulated radio here.
        self.ble_backend = ble_backend
        self.hub = Hub()
        self.live = Live(gateway_id=site.gateway.id)
        self.heartbeats = Heartbeats()
        self.ready = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.reloaded = asyncio.Event()  # set after each reload attempt (tests wait on it)
        self.web_url: str | None = None
        self.store: Store | None = None
        self.units: dict[str, Unit] = {}
        self.runners: dict[str, Runner] = {}  # device id -> the runner that owns its bus
        self.config = ConfigState(file=str(config_path) if config_path else None)
        if config_path is not None:
            self.config.applied(config_hash(config_path.read_bytes()), "started")
        self._availability: dict[str, str] = {}  # device -> last online/offline sent upstream
        self.live.alarms.acknowledger = self.acknowledge_alarm
        # Fleet pushes (fleet/): the pushed version running (None: the local file), the seam that
        # says whether the clock is known good (tests fill it), and pushes waiting for the supervisor.
        self.fleet_version = fleet_version
        self.fleet_clock = fleet_clock
        self.fleet_compose: Callable[[SiteConfig], SiteConfig] | None = None
        self._pushes: list[tuple[SiteConfig, str, str, int, asyncio.Future[Plan]]] = []
        self.push_requested = asyncio.Event()

    # -- the gateway's own readings -----------------------------------------------------

    def _gateway_reading(self, point: str, value: str, reason: str, priority: Priority) -> None:
        reading = Reading(GATEWAY, point, time.time(), value, "", priority=priority, reason=reason[:MAX_REASON_CHARS])
        self.hub.readings(GATEWAY, [reading])

    def _raise_alarm(self, kind: str, message: str, source: str = GATEWAY) -> None:
        self.hub.alarm(source, kind, True, message)

    def _on_alarms(self, transitions: Sequence[AlarmTransition]) -> None:
        """Each transition into the alarm book and, at alarm priority, upstream.

        The gateway's own alarms go up as ``active``/``cleared`` with their text; a rule's
        as its state with ``<severity>: <text>`` (docs/uplinks.md).
        """
        book = self.live.alarms
        for t in transitions:
            state = t.lifecycle_state
            if state == "raised":
                log.error("alarm %s/%s: %s", t.source, t.kind, t.message)
                book.raise_(t.source, t.kind, t.message, t.ts, severity=t.severity, rule=t.rule)
            elif state == "cleared":
                log.info("alarm %s/%s cleared: %s", t.source, t.kind, t.message)
                book.clear(t.source, t.kind, t.ts)
            elif state == "acknowledged":
                log.info("alarm %s/%s acknowledged by %s", t.source, t.kind, t.user or "?")
                book.mark_acknowledged(t.source, t.kind, t.user or "?", t.ts)
            else:
                log.warning("alarm %s/%s still raised: %s", t.source, t.kind, t.message)
            if t.rule is None:
                value = {"raised": "active", "reminder": "active"}.get(state, state)
                reason = t.message if state != "acknowledged" else f"acknowledged by {t.user or '?'}"
            else:
                value, reason = state, f"{t.severity}: {t.message}"
            reading = Reading(
                t.source, t.kind, t.ts, value, "", priority=Priority.ALARM, reason=reason[:MAX_REASON_CHARS]
            )
            self.hub.readings(t.source, [reading])

    def acknowledge_alarm(self, source: str, kind: str, user: str) -> bool:
        """Someone saw an active alarm: the rules engine records it (if it owns it); it goes upstream."""
        alarm = self.live.alarms.find(f"{source}/{kind}")
        if alarm is None or not alarm.active or alarm.acked_by is not None:
            return False
        rules = self.units.get("rules")
        if isinstance(rules, RulesUnit) and rules.owns(source, kind):
            return rules.acknowledge(source, kind, user)
        transition = AlarmTransition(
            source, kind, True, alarm.message, state="acknowledged", severity=alarm.severity, rule=alarm.rule, user=user
        )
        self.hub.publish(Topic.ALARM, [transition])
        return True

    def _on_device_states(self, changes: Sequence[DeviceStateChange]) -> None:
        """Availability goes upstream once per change: online or offline, with the reason.

        Degraded (fewer failures in a row than the offline limit) stays on the page: a
        single lost answer is not news for the city platform.
        """
        for c in changes:
            if c.state not in (DeviceState.ONLINE, DeviceState.OFFLINE):
                continue
            if self._availability.get(c.device) == c.state:
                continue
            self._availability[c.device] = c.state
            reading = Reading(c.device, "state", c.ts, c.state, "", priority=Priority.EVENT, reason=c.reason or None)
            self.hub.readings(c.device, [reading])

    def _report_buffer(self, store: Store) -> None:
        """Damage found at start is an alarm; a buffer made new (first start, new card) an event."""
        if store.damage is not None:
            self._raise_alarm("store_corrupt", f"{store.damage.kind}: {store.damage.message()}")
        elif store.created:
            message = f"new buffer {store.buffer_id}: none was found in {store.path.parent}"
            log.info("%s", message)
            self._gateway_reading("store_created", "created", message, Priority.EVENT)

    # -- running -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; raise if a critical task dies.

        A reload that changes the gateway section (its id or state folder) cannot be
        applied part by part: everything is stopped and started again on the new config.
        """
        while await self._run_once(stop):
            log.info("restarting every part for the new gateway settings")

    async def _run_once(self, stop: asyncio.Event) -> bool:
        site = self.site
        self.live = Live(gateway_id=site.gateway.id, alarms=self.live.alarms)
        build_live(site, profiles_for(site), self.live)
        self.hub = Hub()
        self._availability = {}
        async with AsyncExitStack() as stack:
            store = Store(
                site.gateway.state_dir / STORE_FILE,
                destinations=destination_filters(site),
                budgets=store_budgets(site),
                commit_interval_ms=site.store.commit_interval_ms,
                commit_max_readings=site.store.commit_max_readings,
                max_pending_readings=site.store.max_pending_readings,
                beat=self.heartbeats.register("store", CRITICAL_ALLOWANCE_S),
                on_damage=lambda damage: self._raise_alarm("store_corrupt", f"{damage.kind}: {damage.message()}"),
            )
            await store.open()
            stack.push_async_callback(store.close)
            self.store = store
            self.hub.listen(Topic.READINGS, _store_listener(store))
            self.hub.listen(Topic.DEVICE_STATE, self._on_device_states)
            self.hub.listen(Topic.ALARM, self._on_alarms)
            self._report_buffer(store)
            stack.push_async_callback(self._stop_units)

            for up in site.uplinks:
                await self._start_unit(self._uplink_unit(up, destination_filters(site)[up.name]))
            if site.web.enabled:
                await self._start_unit(self._web_unit(site))
            for bus in site.buses:
                unit = self._bus_unit(site, bus.name)
                if unit is not None:
                    await self._start_unit(unit)
            if site.rules:
                await self._start_unit(self._rules_unit(site))
            if site.fleet is not None and self.config_path is not None:
                await self._start_unit(self._fleet_unit(site))

            aux = [asyncio.create_task(self._status_loop(store), name="status")]
            interval = watchdog_interval_s()
            if interval:
                aux.append(asyncio.create_task(self._watchdog_loop(interval), name="watchdog"))
            stack.push_async_callback(cancel_all, aux)
            if os.environ.get(DEBUG_HANG_ENV) == "1":
                # Test hook for the systemd watchdog: SIGUSR2 really hangs a critical task.
                asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, store.debug_hang)
            self.ready.set()
            self.notifier.ready(await self._summary(store))
            log.info(
                "edgeagent %s running: %d devices on %d buses, %d uplinks%s",
                site.gateway.id,
                len(site.devices),
                sum(1 for u in self.units.values() if isinstance(u, BusUnit)),
                len(site.uplinks),
                f", status page {self.web_url}" if self.web_url else "",
            )
            return await self._supervise(stop)

    async def _supervise(self, stop: asyncio.Event) -> bool:
        """Wait for a stop, a reload or a dead unit; True when everything must start again."""
        stopper = asyncio.create_task(stop.wait(), name="stop")
        try:
            while True:
                self.reload_requested.clear()
                reload = asyncio.create_task(self.reload_requested.wait(), name="reload")
                push = asyncio.create_task(self.push_requested.wait(), name="push")
                watched: dict[asyncio.Task[Any], object] = {u.task: u for u in self.units.values() if u.task}
                if self.store is not None and self.store.task is not None:
                    watched[self.store.task] = self.store
                done, _ = await asyncio.wait({stopper, reload, push, *watched}, return_when=asyncio.FIRST_COMPLETED)
                reload.cancel()
                push.cancel()
                if stopper in done:
                    self.notifier.stopping()
                    log.info("stopping")
                    return False
                failed = [t for t in done if t in watched]
                for t in failed:
                    self.notifier.stopping()
                    exc = None if t.cancelled() else t.exception()
                    raise EdgeAgentError(f"critical task {t.get_name()} died") from exc
                if reload in done and await self.reload():
                    return True
                if push in done:
                    await self._apply_pushes()
        finally:
            await cancel_all([stopper])

    # -- units ---------------------------------------------------------------------------

    async def _start_unit(self, unit: Unit) -> None:
        await unit.start()
        self.units[unit.name] = unit

    async def _stop_unit(self, name: str) -> None:
        unit = self.units.pop(name, None)
        if unit is not None:
            await unit.stop()

    async def _stop_units(self) -> None:
        """Buses first (no new readings), then uplinks (their batch in flight), then the page."""
        order = {"fleet": -1, "rules": -1, "bus": 0, "uplink": 1, "web": 2}
        for name in sorted(self.units, key=lambda n: order.get(n.split(":")[0], 3)):
            await self._stop_unit(name)

    def _bus_unit(self, site: SiteConfig, bus_name: str) -> BusUnit | None:
        bus = next(b for b in site.buses if b.name == bus_name)
        configs = [d for d in site.devices if d.bus == bus_name]
        if not configs:
            return None
        profiles = profiles_for(site)
        runner = build_runner(
            bus,
            configs,
            profiles,
            self.live,
            self._on_readings,
            beat=self.heartbeats.register(f"bus:{bus_name}", CRITICAL_ALLOWANCE_S),
            on_alarm=self._raise_alarm,
            ble_backend=self.ble_backend,
            on_state=self.hub.device_state,
        )
        self.live.buses[bus_name].listener = self.hub.bus_state
        for dev in configs:
            self.runners[dev.id] = runner

        def forget() -> None:
            self.heartbeats.unregister(f"bus:{bus_name}")
            for dev_id in [d for d, r in self.runners.items() if r is runner]:
                del self.runners[dev_id]

        return BusUnit(runner, bus_slice(site, bus_name), on_stop=forget)

    def _rules_unit(self, site: SiteConfig) -> RulesUnit:
        """The rules engine; it writes devices only through ``write_point``."""
        beat = self.heartbeats.register("rules", CRITICAL_ALLOWANCE_S)
        unit = RulesUnit(site, self.hub, self.write_point, state_dir=site.gateway.state_dir, beat=beat)
        self.live.rules_status = unit.status
        return unit

    async def _reload_rules(self, site: SiteConfig, plan: Plan) -> None:
        """Changed rules restart alone (the unit compares each rule); the others keep their state."""
        unit = self.units.get("rules")
        if isinstance(unit, RulesUnit) and site.rules:
            plan.rules_restarted = await unit.update(site)
        elif unit is not None:
            await self._stop_unit("rules")
            self.heartbeats.unregister("rules")
            self.live.rules_status = None
        elif site.rules:
            await self._start_unit(self._rules_unit(site))
            plan.rules_restarted = [r.name for r in site.rules]

    def _on_readings(self, readings: list[Reading]) -> None:
        if readings:
            self.hub.readings(readings[0].device, readings)

    def _uplink_unit(self, cfg: Any, filt: DestinationFilter) -> UplinkUnit:
        from edgeagent.sync.worker import SyncWorker
        from edgeagent.uplinks import make_uplink

        store = self.store
        assert store is not None
        uplink = make_uplink(cfg, self.site.gateway.id)
        self.live.uplinks[uplink.name] = UplinkLive(name=uplink.name, kind=cfg.kind, target=uplink.target)

        def make_worker(up: Uplink) -> SyncWorker:
            return SyncWorker(
                store,
                up,
                self.live.uplinks[up.name],
                gateway_id=self.site.gateway.id,
                batch_max_readings=cfg.batch_max_readings,
                retry_min_s=cfg.retry_min_ms / 1000,
                retry_max_s=cfg.retry_max_ms / 1000,
                rejected_retry_s=getattr(cfg, "rejected_retry_s", DEFAULT_REJECTED_RETRY_S),
                bandwidth_bytes_per_s=cfg.bandwidth_bytes_per_s,
                beat=self.heartbeats.register(f"sync:{up.name}", CRITICAL_ALLOWANCE_S),
                on_result=self.hub.uplink_result,
            )

        return UplinkUnit(uplink, make_worker, (cfg, filt))

    def _web_unit(self, site: SiteConfig) -> WebUnit:
        return WebUnit(self._serve_web, site.web)

    async def _serve_web(self) -> web.AppRunner:
        from edgeagent.web.serve import serve_page

        runner, self.web_url = await serve_page(self, shutdown_timeout_s=WEB_SHUTDOWN_S)
        return runner

    def _fleet_unit(self, site: SiteConfig) -> Unit:
        from edgeagent.fleet.pipeline import FleetHost
        from edgeagent.fleet.unit import FleetUnit

        assert self.config_path is not None

        def commits() -> tuple[asyncio.Event, Callable[[], None]]:
            store = self.store
            assert store is not None
            event = store.subscribe()
            return event, lambda: store.unsubscribe(event)

        def status(doc: dict[str, Any]) -> None:
            self.config.fleet = doc

        host = FleetHost(
            site=lambda: self.site,
            reconfigure=self.push_config,
            live=lambda: self.live,
            commits=commits,
            report=lambda point, value, reason: self._gateway_reading(point, value, reason, Priority.EVENT),
            status=status,
        )
        unit = FleetUnit(
            site, self.config_path, host, running_version=self.fleet_version, clock_synchronized=self.fleet_clock
        )
        self.fleet_compose = unit.compose_for_reload
        return unit

    async def push_config(self, site: SiteConfig, digest: str, detail: str, version: int) -> Plan:
        """Apply a pushed (already validated) config through the supervisor, as a reload would be."""
        done: asyncio.Future[Plan] = asyncio.get_running_loop().create_future()
        self._pushes.append((site, digest, detail, version, done))
        self.push_requested.set()
        return await done

    async def _apply_pushes(self) -> None:
        self.push_requested.clear()
        while self._pushes:
            site, digest, detail, version, done = self._pushes.pop(0)
            if done.done():
                continue
            plan = plan_reload(self.site, site)
            try:
                if plan.restart_all:
                    raise EdgeAgentError("a pushed config cannot change the gateway settings")
                await self._apply(plan, site)
            except (EdgeAgentError, OSError) as exc:
                done.set_exception(exc)
                continue
            self.fleet_version = version or None
            self.config.applied(digest, f"{detail}: {plan.describe()}")
            log.info("%s applied: %s", detail, plan)
            self._gateway_reading("config_applied", digest, self.config.detail, Priority.EVENT)
            done.set_result(plan)

    # -- reload --------------------------------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP: re-read the config file and apply what changed."""
        self.reload_requested.set()

    async def reload(self) -> bool:
        """Validate the config file as check-config does and apply it; True if all must restart."""
        started = time.monotonic()
        try:
            return await self._reload(started)
        finally:
            self.reloaded.set()

    async def _reload(self, started: float) -> bool:
        from edgeagent.cli import load_for_run

        if self.config_path is None:
            log.warning("reload requested, but the agent was not started from a config file")
            return False
        self.notifier.reloading()
        from edgeagent.profiles import load_profile

        load_profile.cache_clear()  # a profile edited on disk is read again, as a restart would
        try:
            data = self.config_path.read_bytes()
            digest = config_hash(data)
            site = load_for_run(str(self.config_path))
            if self.fleet_compose is not None:
                site = self.fleet_compose(site)  # a pushed config keeps running; the file's bootstrap is taken
        except (ConfigError, OSError) as exc:
            problems = [str(p) for p in exc.problems] if isinstance(exc, ConfigError) else [str(exc)]
            for problem in problems:
                log.error("reload: config: %s", problem)
            digest = locals().get("digest", "unreadable")
            self.config.rejected(digest, "; ".join(problems))
            log.error("reload rejected (config %s): the running config stays", digest)
            self._gateway_reading("config_rejected", digest, "; ".join(problems), Priority.EVENT)
            self.notifier.ready(f"config {digest} rejected")
            return False
        plan = plan_reload(self.site, site)
        if plan.restart_all:
            self.site = site
            self.config.applied(digest, "gateway settings changed: everything restarted")
            self._gateway_reading("config_applied", digest, self.config.detail, Priority.EVENT)
            return True
        await self._apply(plan, site)
        self.config.applied(digest, plan.describe())
        log.info("reload applied (config %s) in %.0f ms: %s", digest, (time.monotonic() - started) * 1000, plan)
        self._gateway_reading("config_applied", digest, plan.describe(), Priority.EVENT)
        self.notifier.ready(await self._summary(self.store) if self.store else "reloaded")
        return False

    async def _apply(self, plan: Plan, site: SiteConfig) -> None:
        """Stop what went or changed, swap devices in place where a bus stays, start what came."""
        store = self.store
        assert store is not None
        old = self.site
        for name in plan.buses_stop:
            await self._stop_unit(f"bus:{name}")
        for name in plan.uplinks_stop:
            await self._stop_unit(f"uplink:{name}")
        if plan.web_restart:
            await self._stop_unit("web")
        self.site = site
        profiles = profiles_for(site)
        # The live picture: devices and buses that went, came or changed.
        for dev_id in plan.devices_gone:
            self.live.devices.pop(dev_id, None)
            self._availability.pop(dev_id, None)
        for name in plan.buses_gone:
            self.live.buses.pop(name, None)
        for dev in site.devices:
            if dev.id in plan.devices_new:
                self.live.devices[dev.id] = device_live_of(dev, profiles[dev.profile])
        for bus in site.buses:
            if bus.name not in self.live.buses or bus.name in plan.buses_start:
                self.live.buses[bus.name] = bus_live_of(bus)
        if plan.store_changed:
            await store.reconfigure(
                budgets=store_budgets(site),
                commit_interval_ms=site.store.commit_interval_ms,
                commit_max_readings=site.store.commit_max_readings,
                max_pending_readings=site.store.max_pending_readings,
            )
        filters = destination_filters(site)
        if filters != destination_filters(old):
            await store.set_destinations(filters)
        for name in plan.swap:
            self._swap_devices(site, name, plan)
        for name in plan.buses_start:
            unit = self._bus_unit(site, name)
            if unit is not None:
                await self._start_unit(unit)
        for up in site.uplinks:
            if up.name in plan.uplinks_start:
                await self._start_unit(self._uplink_unit(up, filters[up.name]))
        if plan.web_restart and site.web.enabled:
            await self._start_unit(self._web_unit(site))
        if plan.rules_changed:
            await self._reload_rules(site, plan)
        if old.fleet != site.fleet:  # only the local file sets [fleet]; a push never gets here
            await self._stop_unit("fleet")
            if site.fleet is not None and self.config_path is not None:
                await self._start_unit(self._fleet_unit(site))

    def _swap_devices(self, site: SiteConfig, bus_name: str, plan: Plan) -> None:
        """A polled bus keeps running; its device list changes under it."""
        from edgeagent.devices.build import polled_devices
        from edgeagent.devices.scheduler import BusPoller

        unit = self.units[f"bus:{bus_name}"]
        assert isinstance(unit, BusUnit) and isinstance(unit.runner, BusPoller)
        bus = next(b for b in site.buses if b.name == bus_name)
        configs = [d for d in site.devices if d.bus == bus_name]
        unit.runner.update_devices(polled_devices(bus, configs, profiles_for(site)), keep=plan.devices_kept)
        unit.slice = bus_slice(site, bus_name)
        for dev_id in [d for d, r in self.runners.items() if r is unit.runner]:
            del self.runners[dev_id]
        for dev in configs:
            self.runners[dev.id] = unit.runner

    # -- writes, status, watchdog --------------------------------------------------------

    async def write_point(self, device_id: str, point: str, value: float | str) -> str:
        """Write one point of a device through its bus's scheduler (for rules); return what was written."""
        from edgeagent.devices.scheduler import BusPoller

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
            try:
                self.notifier.status(await self._summary(store))
            except StoreError as exc:  # reported by the store itself; the next round tries again
                self.notifier.status(f"store unreadable: {exc}")

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


def _store_listener(store: Store) -> Any:
    def append(batches: Sequence[ReadingsBatch]) -> None:
        for batch in batches:
            for r in batch.readings:
                store.append(r)

    return append


def bus_slice(site: SiteConfig, bus_name: str) -> tuple[object, ...]:
    """What a bus's unit is built from: the bus, and each of its devices with its profile."""
    bus = next(b for b in site.buses if b.name == bus_name)
    profiles = profiles_for(site)
    return (bus, tuple((d, profiles[d.profile]) for d in site.devices if d.bus == bus_name))


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


def install_signal_handlers(stop: asyncio.Event, agent: Agent | None = None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if agent is not None:
        loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
    else:
        # Nothing to reload (the demo): a SIGHUP must not kill the process either.
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP ignored: nothing to reload"))
