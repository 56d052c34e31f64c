"""The one scheduler each polled bus has.

A ``BusPoller`` owns a bus (a serial line, or a TCP host:port): every device on it
goes through it, one transaction at a time, each device on its own interval. Due times
advance by the interval from the previous due time, not from when the poll ended, so
short delays do not add up into a lower poll rate. A failing device is retried on its
normal schedule until it is offline, then with capped, jittered backoff and a single
attempt per probe, so a dead sensor costs its neighbours as little bus time as
possible. Writes (from rules or the CLI) queue here too and go first.

A connection that stops answering while it looks open (a converter behind a NAT that
dropped it, a stuck converter) is reopened once every request on it goes unanswered:
``silence.py`` tells that apart from one dead unit among answering neighbours, which
must never cost them their connection. Each reopen is logged once and counted in the
bus's ``restarts``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from edgeagent.backoff import Backoff
from edgeagent.config import DeviceConfig
from edgeagent.devices.health import Health, StateSink
from edgeagent.devices.modbus import ModbusDevice
from edgeagent.devices.silence import SilenceWatch, Verdict
from edgeagent.errors import (
    DecodeError,
    DeviceError,
    DeviceException,
    DeviceTimeout,
    DeviceUnreachable,
    InvalidWrite,
)
from edgeagent.live import BusLive, DeviceLive
from edgeagent.model import Reading

log = logging.getLogger(__name__)

Transact = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


class PolledDevice(Protocol):
    """What the scheduler needs of a device; it fetches, the scheduler decides when."""

    id: str
    cfg: DeviceConfig
    poll_interval_s: float
    timeout_s: float
    framing_errors: int

    async def poll(self, transport: Any, transact: Transact) -> list[Reading]: ...

    def labels(self, readings: Sequence[Reading]) -> dict[str, str]: ...


class Closable(Protocol):
    label: str

    async def close(self) -> None: ...


@runtime_checkable
class Reopenable(Protocol):
    """A transport whose connection can be dropped and dialled again after its backoff."""

    label: str

    async def close(self) -> None: ...

    async def reopen(self, reason: str) -> None: ...


@dataclass(slots=True)
class _Schedule:
    device: PolledDevice
    health: Health
    due: float
    backoff: Backoff = field(init=False)

    def __post_init__(self) -> None:
        interval = self.device.poll_interval_s
        self.backoff = Backoff(interval, max(interval, self.device.cfg.backoff_max_s), full_jitter=False)


@dataclass(slots=True)
class _WriteJob:
    device: ModbusDevice
    point: str
    value: float | str
    done: asyncio.Future[str]


class BusPoller:
    """The only owner of one bus's schedule."""

    def __init__(
        self,
        name: str,
        transport: Closable,
        devices: Sequence[PolledDevice],
        live: dict[str, DeviceLive],
        on_readings: Callable[[list[Reading]], None],
        *,
        beat: Callable[[], None] | None = None,
        bus_live: BusLive | None = None,
        close_after_poll: bool = False,
        inter_poll_s: float = 0.0,
        reopen_after_timeouts: int | None = None,
        on_state: StateSink | None = None,
    ) -> None:
        self.name = name
        self.transport = transport
        self.live = live
        self.on_readings = on_readings
        self.bus_live = bus_live
        self.close_after_poll = close_after_poll
        self.inter_poll_s = inter_poll_s
        self._beat = beat or (lambda: None)
        now = time.monotonic()
        self._schedules = [
            _Schedule(d, Health(live[d.id], offline_after=d.cfg.offline_after_failures, on_state=on_state), now)
            for d in devices
        ]
        self._by_id = {s.device.id: s for s in self._schedules}
        self._on_state = on_state
        self._writes: deque[_WriteJob] = deque()
        self._waiting: dict[str, list[asyncio.Future[str | None]]] = {}  # device -> poll_now callers
        self._wake = asyncio.Event()
        self._running = False
        self._silence: SilenceWatch | None = None
        if reopen_after_timeouts is not None:
            if not isinstance(transport, Reopenable):
                raise TypeError(f"bus {name}: its transport cannot be reopened")
            self._silence = SilenceWatch(reopen_after_timeouts, list(self._by_id))
        self._reopens = 0  # reopens since the connection last answered

    @property
    def device_ids(self) -> list[str]:
        return list(self._by_id)

    def update_devices(self, devices: Sequence[PolledDevice], keep: Collection[str]) -> None:
        """Take a new device list while polling on (a reload): no device in ``keep`` misses a beat.

        A kept device keeps its schedule, health and backoff as they are; a new or changed
        one starts with a poll now; one no longer listed stops (its queued writes fail).
        """
        now = time.monotonic()
        schedules: dict[str, _Schedule] = {}
        for d in devices:
            old = self._by_id.get(d.id)
            if old is not None and d.id in keep:
                schedules[d.id] = old
            else:
                health = Health(self.live[d.id], offline_after=d.cfg.offline_after_failures, on_state=self._on_state)
                schedules[d.id] = _Schedule(d, health, now)
        for job in [j for j in self._writes if j.device.id not in schedules]:
            self._writes.remove(job)
            if not job.done.done():
                job.done.set_exception(DeviceUnreachable(f"{job.device.id} was removed from bus {self.name}"))
        self._by_id = schedules
        self._schedules = list(schedules.values())
        if self._silence is not None:
            self._silence = SilenceWatch(self._silence.limit, list(schedules))
        self._wake.set()

    def device(self, device_id: str) -> PolledDevice:
        return self._by_id[device_id].device

    async def run(self) -> None:
        """Poll forever; cancelled to stop. Wakes at least once a second to check in."""
        self._running = True
        try:
            while True:
                self._beat()
                if self._writes:
                    await self._write(self._writes.popleft())
                    continue
                entry = min(self._schedules, key=lambda s: s.due)
                delay = entry.due - time.monotonic()
                if delay > 0:
                    self._wake.clear()
                    try:
                        async with asyncio.timeout(min(delay, 1.0)):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                    continue
                await self._poll(entry)
                if self.inter_poll_s:
                    await asyncio.sleep(self.inter_poll_s)
        finally:
            self._running = False
            for job in self._writes:
                if not job.done.done():
                    job.done.set_exception(DeviceUnreachable(f"bus {self.name} stopped before the write was sent"))
            self._writes.clear()
            for waiters in self._waiting.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(DeviceUnreachable(f"bus {self.name} stopped"))
            self._waiting.clear()
            await self.transport.close()

    def _transact(self, entry: _Schedule) -> Transact:
        """Retries and a hard ceiling around one transaction of this device."""
        device = entry.device
        attempts = 1 if entry.health.offline else device.cfg.retries + 1
        # A hard ceiling, so a misbehaving library can never hang the bus.
        ceiling_s = device.timeout_s * 2 + 1

        async def transact(op: Callable[[], Awaitable[Any]]) -> Any:
            for attempt in range(attempts):
                try:
                    async with asyncio.timeout(ceiling_s):
                        result = await op()
                except TimeoutError as exc:
                    # After a reopen, a retry would only meet the reopen's backoff.
                    if await self._unanswered(entry) or attempt + 1 == attempts:
                        raise DeviceTimeout(f"no answer from {device.id} within {ceiling_s:g} s") from exc
                except DeviceTimeout:
                    if await self._unanswered(entry) or attempt + 1 == attempts:
                        raise
                except DeviceException:
                    self._answered(device.id)  # an exception answer: the connection works
                    raise
                except DeviceUnreachable:
                    if self._silence is not None:
                        self._silence.reset()  # the next connection is judged afresh
                    raise
                else:
                    self._answered(device.id)
                    if self.bus_live is not None:
                        self.bus_live.transactions += 1
                    return result
            raise AssertionError("unreachable")

        return transact

    # A connection that answers nothing ------------------------------------------------

    def _answered(self, device_id: str) -> None:
        if self._silence is None:
            return
        self._silence.answered(device_id)
        if self._reopens:
            log.info("bus %s answers again after %d reopen(s) of %s", self.name, self._reopens, self.transport.label)
            self._reopens = 0

    async def _unanswered(self, entry: _Schedule) -> bool:
        """Count a timeout against the connection; True if that got the connection reopened."""
        if self._silence is None:
            return False
        verdict = self._silence.timed_out(entry.device.id)
        if verdict is Verdict.ASK_ANOTHER:
            self._ask_witness()
        elif verdict is Verdict.SILENT:
            await self._reopen()
            return True
        return False

    def _ask_witness(self) -> None:
        """One device alone has gone quiet: poll another now; its answer or silence decides."""
        assert self._silence is not None
        witnesses = self._silence.witnesses()
        candidates = [s for s in self._schedules if s.device.id in witnesses]
        if candidates:
            pick = min(candidates, key=lambda s: (s.health.offline, s.due))
            pick.due = min(pick.due, time.monotonic())

    async def _reopen(self) -> None:
        assert self._silence is not None and isinstance(self.transport, Reopenable)
        reason = f"connection silent: {self._silence.describe()}"
        self._silence.reset()
        self._reopens += 1
        if self.bus_live is not None:
            self.bus_live.restarts += 1
            self.bus_live.set_state("down", f"{reason}; dialling again")
        if self._reopens == 1:
            log.warning("bus %s: %s on %s; closing it and dialling again", self.name, reason, self.transport.label)
        else:  # still silent after a reopen: counted on the status page, not repeated in the log
            log.debug("bus %s: %s again (reopen %d)", self.name, reason, self._reopens)
        await self.transport.reopen(reason)

    # Polls ----------------------------------------------------------------------------

    async def _poll(self, entry: _Schedule) -> None:
        device = entry.device
        framing_before = device.framing_errors
        frames = getattr(self.transport, "frames", None)
        if frames is not None:
            frames.clear()
        outcome: str | None = "stopped"
        try:
            readings = await device.poll(self.transport, self._transact(entry))
        except DeviceError as exc:
            self._failed(entry, exc)
            outcome = exc.reason
        except DecodeError as exc:
            self._failed(entry, DeviceError(f"bad data: {exc}"))
            outcome = f"bad data: {exc}"
        else:
            self._succeeded(entry, readings)
            outcome = None
        finally:
            entry.health.live.framing_errors += device.framing_errors - framing_before
            if frames:  # nothing sent (the bus cannot be reached): the last exchange stays shown
                entry.health.live.frames = list(frames)
            if self.close_after_poll:
                await self.transport.close()
            for waiter in self._waiting.pop(device.id, []):
                if not waiter.done():
                    waiter.set_result(outcome)

    async def poll_now(self, device_id: str) -> str | None:
        """Poll one device ahead of its turn (a technician's "re-poll now"); None if it answered, else why not."""
        entry = self._by_id.get(device_id)
        if entry is None:
            raise InvalidWrite(f"no device {device_id!r} on bus {self.name}")
        if not self._running:
            raise DeviceUnreachable(f"bus {self.name} is not running")
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(device_id, []).append(waiter)
        entry.due = min(entry.due, time.monotonic())
        self._wake.set()
        return await waiter

    def _succeeded(self, entry: _Schedule, readings: list[Reading]) -> None:
        entry.health.succeeded(readings, entry.device.labels(readings))
        self._bus_ok()
        self.on_readings(readings)
        entry.backoff.reset()
        now = time.monotonic()
        nxt = entry.due + entry.device.poll_interval_s
        entry.due = nxt if nxt > now else now

    def _failed(self, entry: _Schedule, exc: DeviceError) -> None:
        was_offline = entry.health.offline
        entry.health.failed(exc.reason)
        if isinstance(exc, DeviceUnreachable):
            self._bus_down(exc.reason)
        interval = entry.device.poll_interval_s
        if not entry.health.offline:
            # Degraded: keep the normal rhythm, so the next try is one interval on.
            entry.due = max(entry.due + interval, time.monotonic())
        else:
            # Offline: probe with capped, jittered backoff, counted from now.
            if not was_offline:
                entry.backoff.reset()
            entry.due = time.monotonic() + entry.backoff.next_delay()

    def _bus_ok(self) -> None:
        if self.bus_live is not None:
            self.bus_live.set_state("ok")

    def _bus_down(self, reason: str) -> None:
        if self.bus_live is not None:
            self.bus_live.set_state("down", reason)

    # Writes ---------------------------------------------------------------------------

    async def write(self, device_id: str, point: str, value: float | str) -> str:
        """Write one point of one device between polls; return what was written ("40 %").

        Raises InvalidWrite before anything is sent when the point or value is wrong,
        and DeviceError when the device does not take it.
        """
        entry = self._by_id.get(device_id)
        if entry is None:
            raise InvalidWrite(f"no device {device_id!r} on bus {self.name}")
        device = entry.device
        if not isinstance(device, ModbusDevice):
            raise InvalidWrite(f"{device_id} is not a Modbus device; it takes no writes")
        device.plan_write(point, value)  # refuse bad input at once, not after the queue
        if not self._running:
            raise DeviceUnreachable(f"bus {self.name} is not running")
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._writes.append(_WriteJob(device, point, value, done))
        self._wake.set()
        return await done

    async def _write(self, job: _WriteJob) -> None:
        entry = self._by_id[job.device.id]
        try:
            plan = job.device.plan_write(job.point, job.value)
            await job.device.write(self.transport, plan, self._transact(entry))  # type: ignore[arg-type]
        except (DeviceError, InvalidWrite) as exc:
            if not job.done.done():
                job.done.set_exception(exc)
            return
        finally:
            if self.close_after_poll:
                await self.transport.close()
        log.info("wrote %s.%s = %s", job.device.id, plan.point, plan.shown)
        if not job.done.done():
            job.done.set_result(plan.shown)
        entry.due = time.monotonic()  # read it back now, so the status page shows the new value
