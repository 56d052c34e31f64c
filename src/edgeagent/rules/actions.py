"""Confirmed writes: what the arbiter wants, written through the bus's scheduler and read back.

One worker per written device. A point is written when the value the arbiter wants is
not known to be on the device; after the write the scheduler polls the device at once,
and the next reading of that point is the read-back: equal (within a rounding step) is
a confirmation, anything else, a device exception or no reading in time is a failure
(an ``action_failed`` alarm naming device and point, cleared by the next confirmation),
retried with capped backoff. While a rule claims the point (``enforce``), the value is
re-asserted whenever a reading shows something else (a sign controller that rebooted
blank) or the device comes back online. Writes to one device are at least
``WRITE_MIN_INTERVAL_S`` apart, so no rule can hammer a device's EEPROM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edgeagent.errors import DeviceError, InvalidWrite
from edgeagent.model import Quality, Reading
from edgeagent.rules.model import Intent

log = logging.getLogger(__name__)

WRITE_MIN_INTERVAL_S = 1.0
READBACK_TIMEOUT_S = 5.0
RETRY_MIN_S = 2.0
RETRY_MAX_S = 60.0
LATENCY_SAMPLES = 1000

Point = tuple[str, str]
WriteFn = Callable[[str, str, float | str], Awaitable[str]]
ResultFn = Callable[[str, str, str | None], None]  # device, point, error (None: confirmed)


def shown(value: float | str) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def same_value(read: float, wanted: float) -> bool:
    return abs(read - wanted) <= 1e-6 * max(1.0, abs(wanted))


@dataclass(slots=True)
class Latency:
    """One confirmed write: from the intent to the read-back, and the part spent in the write itself."""

    total_s: float
    write_s: float
    readback_s: float


class Writer:
    def __init__(self, write: WriteFn, result: ResultFn) -> None:
        self._write = write
        self._result = result
        self.desired: dict[Point, Intent] = {}
        self.confirmed: dict[Point, float] = {}
        self._wanted_at: dict[Point, float] = {}
        self._readback: dict[Point, asyncio.Future[Reading]] = {}
        self._busy: set[Point] = set()
        self._retry_at: dict[Point, float] = {}
        self._retry_s: dict[Point, float] = {}
        self._last_write: dict[str, float] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.writes = 0
        self.failures = 0
        self.latencies: deque[Latency] = deque(maxlen=LATENCY_SAMPLES)

    # -- told by the unit --------------------------------------------------------------------

    def load(self, desired: dict[Point, Intent]) -> None:
        """At start: what the restored rules want. A released value is taken as already there."""
        for point, intent in desired.items():
            self.desired[point] = intent
            if not intent.enforce and intent.expected is not None:
                self.confirmed[point] = intent.expected
            self._kick(point[0])

    def want(self, intent: Intent) -> None:
        point = (intent.device, intent.point)
        self.desired[point] = intent
        self._wanted_at[point] = time.perf_counter()
        self._retry_at.pop(point, None)
        self._kick(intent.device)

    def observe(self, r: Reading) -> None:
        """Every reading of a written point: a read-back, or a device that lost its value."""
        point = (r.device, r.point)
        waiter = self._readback.get(point)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(r)
            return
        intent = self.desired.get(point)
        if intent is None or intent.expected is None or point in self._busy:
            return
        if r.quality != Quality.GOOD or not isinstance(r.value, float | int):
            return
        if same_value(float(r.value), intent.expected):
            self.confirmed[point] = intent.expected
        elif intent.enforce:
            if self.confirmed.pop(point, None) is not None:
                log.warning("%s/%s reads %s, not %s: writing it again", *point, r.value, shown(intent.value))
            self._kick(r.device)

    def device_state(self, device: str, state: str, previous: str) -> None:
        """A device back online (a rebooted sign controller): re-assert what is claimed on it at once."""
        if state != "online" or previous == "online":
            return
        for point, intent in self.desired.items():
            if point[0] == device and intent.enforce:
                self.confirmed.pop(point, None)
                self._retry_at.pop(point, None)
        self._kick(device)

    def pending(self) -> list[dict[str, object]]:
        return [
            {
                "device": d,
                "point": p,
                "value": i.value,
                "rule": i.rule,
                "enforced": i.enforce,
                "confirmed": self.confirmed.get((d, p)) == i.expected,
            }
            for (d, p), i in sorted(self.desired.items())
        ]

    # -- the workers ---------------------------------------------------------------------------

    def _kick(self, device: str) -> None:
        event = self._wake.setdefault(device, asyncio.Event())
        event.set()
        if device not in self._tasks:
            task = asyncio.get_running_loop().create_task(self._run(device), name=f"rules-write:{device}")
            task.add_done_callback(lambda t, d=device: self._ended(d, t))
            self._tasks[device] = task

    def _ended(self, device: str, task: asyncio.Task[None]) -> None:
        """A worker ended by a bug is logged and forgotten: the next value wanted starts a new one."""
        if self._tasks.get(device) is task:
            del self._tasks[device]
        if not task.cancelled() and task.exception() is not None:
            log.error("rules: the writer of %s failed: %r", device, task.exception())

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def _due(self, device: str, now: float) -> tuple[Point | None, float | None]:
        """The next point of ``device`` to write now, else when to look again."""
        later: float | None = None
        for point, intent in self.desired.items():
            if point[0] != device or intent.expected is None or self.confirmed.get(point) == intent.expected:
                continue
            retry = self._retry_at.get(point)
            if retry is not None and retry > now:
                later = retry if later is None else min(later, retry)
                continue
            return point, None
        return None, later

    async def _run(self, device: str) -> None:
        wake = self._wake[device]
        while True:
            now = time.monotonic()
            point, later = self._due(device, now)
            if point is None:
                wake.clear()
                timeout = None if later is None else max(0.0, later - now)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await wake.wait()
                continue
            gap = self._last_write.get(device, -1e9) + WRITE_MIN_INTERVAL_S - now
            if gap > 0:
                await asyncio.sleep(gap)
                continue  # what is wanted may have changed meanwhile
            await self._write_once(point)

    async def _write_once(self, point: Point) -> None:
        device, name = point
        intent = self.desired[point]
        assert intent.expected is not None
        self._busy.add(point)
        self._last_write[device] = time.monotonic()
        started = time.perf_counter()
        error: str | None = None
        try:
            self.writes += 1
            try:
                await self._write(device, name, intent.value)
            except (DeviceError, InvalidWrite) as exc:
                error = f"writing {shown(intent.value)} failed: {exc}"
                return
            written = time.perf_counter()
            waiter: asyncio.Future[Reading] = asyncio.get_running_loop().create_future()
            self._readback[point] = waiter
            try:
                async with asyncio.timeout(READBACK_TIMEOUT_S):
                    reading = await waiter
            except TimeoutError:
                error = f"wrote {shown(intent.value)}, but no reading came back within {READBACK_TIMEOUT_S:g} s"
                return
            finally:
                self._readback.pop(point, None)
            value = reading.value
            if reading.quality != Quality.GOOD or not isinstance(value, float | int):
                error = f"wrote {shown(intent.value)}, read back no value ({reading.quality.name.lower()})"
            elif not same_value(float(value), intent.expected):
                error = f"wrote {shown(intent.value)}, read back {value:g}"
            else:
                done = time.perf_counter()
                since = self._wanted_at.pop(point, started)
                self.latencies.append(Latency(done - since, written - started, done - written))
        finally:
            self._busy.discard(point)
            self._settle(point, intent, error)

    def _settle(self, point: Point, intent: Intent, error: str | None) -> None:
        if self.desired.get(point) is not intent:
            return  # something else is wanted now: the next round writes that
        if error is None:
            self.confirmed[point] = intent.expected  # type: ignore[assignment]
            self._retry_s.pop(point, None)
            self._retry_at.pop(point, None)
            log.info("rule %s: %s/%s = %s confirmed", intent.rule, *point, shown(intent.value))
        else:
            self.failures += 1
            self.confirmed.pop(point, None)
            delay = min(RETRY_MAX_S, self._retry_s.get(point, RETRY_MIN_S / 2) * 2)
            self._retry_s[point] = delay
            self._retry_at[point] = time.monotonic() + delay
            log.warning("rule %s: %s/%s: %s; retrying in %.0f s", intent.rule, *point, error, delay)
        self._result(*point, error)
