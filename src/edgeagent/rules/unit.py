"""The rules engine as one of the agent's units: the hub in, alarms, events and writes out.

It listens on the hub (readings, device states) and feeds the engine synchronously, so
two readings a millisecond apart are two steps of one state machine, never a race. Its
task fires the engine's deadlines on the wall clock, saves its state (``state.py``: on
transitions, not per reading), and checks in with the watchdog. Alarm transitions go
back on the hub (the agent stores them at alarm priority with a full sync and sends them
upstream first), events as event readings, intents to the writer (``actions.py``),
which writes through the function the supervisor hands it, never into a runner.

On a reload only changed rules restart (``Engine.reconfigure``); the others keep their
alarms, deadlines and windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeagent.hub import AlarmTransition, DeviceStateChange, Hub, ReadingsBatch, Topic
from edgeagent.model import Priority, Quality, Reading
from edgeagent.rules.actions import Writer
from edgeagent.rules.bind import BoundRule, bind_rules
from edgeagent.rules.engine import SOON, URGENT, WINDOWS, Engine
from edgeagent.rules.model import Event, Intent, Transition
from edgeagent.rules.state import (
    SOON_S,
    WINDOWS_FILE,
    WINDOWS_S,
    StateFile,
    restore,
    restore_windows,
    snapshot,
    windows_snapshot,
)

if TYPE_CHECKING:
    from edgeagent.config import SiteConfig

log = logging.getLogger(__name__)

MAX_SLEEP_S = 1.0  # the task checks in at least this often
SAVE_RETRY_S = 10.0  # after a failed save (a full or read-only disk), the next try
ACTIVE_STATES = ("raised", "acknowledged", "reminder")


def bound_rules(site: SiteConfig) -> list[BoundRule]:
    from edgeagent.config import profiles_for

    rules, problems = bind_rules(site, profiles_for(site))
    assert not problems, problems  # the config was validated with the same function
    return rules


class RulesUnit:
    name = "rules"

    def __init__(
        self,
        site: SiteConfig,
        hub: Hub,
        write: Callable[[str, str, float | str], Awaitable[str]],
        *,
        state_dir: Path,
        beat: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.slice: object = tuple(site.rules)
        self._rules = bound_rules(site)
        self._hub = hub
        self._clock = clock
        self._beat = beat or (lambda: None)
        self._file = StateFile(state_dir)
        self._windows_file = StateFile(state_dir, WINDOWS_FILE)
        self.writer = Writer(write, self._action_result)
        self._out: list[Transition | Intent | Event] = []
        self._wake = asyncio.Event()
        self._unsubscribe: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._saved_at = {URGENT: 0.0, WINDOWS: 0.0}  # monotonic time of the last save of each file
        self._save_error: str | None = None
        self._retry_at = 0.0
        self.engine: Engine | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        now = self._clock()
        engine = Engine(
            self._rules, now=now, on_transition=self._out.append, on_intent=self._out.append, on_event=self._out.append
        )
        saved = self._file.load()
        active = restore(engine, saved, now)
        restore_windows(engine, self._windows_file.load(), now)
        self.engine = engine
        if saved is not None:
            log.info("rules: state restored from %s (%d alarms active)", self._file.path, active)
        self.writer.load(dict(engine.arbiter.desired))
        self._flush()
        self._unsubscribe = [
            self._hub.listen(Topic.READINGS, self._on_readings),
            self._hub.listen(Topic.DEVICE_STATE, self._on_device_states),
        ]
        self._task = asyncio.create_task(self._run(), name="rules")
        log.info("rules: %d rules over %d subjects", len(self._rules), sum(len(r.subjects) for r in self._rules))

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            with contextlib.suppress(ValueError):
                unsubscribe()
        self._unsubscribe = []
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.writer.close()
        if self.engine is not None:
            await self._save(URGENT)
            await self._save(WINDOWS)

    async def update(self, site: SiteConfig) -> list[str]:
        """A reload: take the new rules; only changed ones restart. Returns their names."""
        assert self.engine is not None
        self._rules = bound_rules(site)
        self.slice = tuple(site.rules)
        restarted = self.engine.reconfigure(self._rules, self._clock())
        self._flush()
        self._wake.set()
        return restarted

    # -- hub listeners -----------------------------------------------------------------------

    def _on_readings(self, batches: Sequence[ReadingsBatch]) -> None:
        engine = self.engine
        if engine is None:
            return
        before = engine.next_deadline()
        good = Quality.GOOD
        observe = self.writer.observe
        for batch in batches:
            for r in batch.readings:
                engine.on_reading(r.device, r.point, r.value, r.quality == good, r.ts)
                observe(r)
        if self._out:
            self._flush()
        after = engine.next_deadline()
        if engine.dirty & URGENT or (after is not None and (before is None or after < before)):
            self._wake.set()

    def _on_device_states(self, changes: Sequence[DeviceStateChange]) -> None:
        for c in changes:
            self.writer.device_state(c.device, c.state, c.previous)

    def _action_result(self, device: str, point: str, error: str | None) -> None:
        if self.engine is not None:
            self.engine.action_result(device, point, error, self._clock())
            self._flush()
            self._wake.set()

    def acknowledge(self, source: str, kind: str, user: str) -> bool:
        """Acknowledge an alarm this engine owns; False if it owns no such raised alarm."""
        if self.engine is None or not self.engine.acknowledge(source, kind, user, self._clock()):
            return False
        self._flush(user=user)
        self._wake.set()
        return True

    def owns(self, source: str, kind: str) -> bool:
        return self.engine is not None and self.engine.owns(source, kind)

    # -- what the engine said ------------------------------------------------------------------

    def _flush(self, user: str | None = None) -> None:
        out = self._out[:]  # the engine appends to this very list
        self._out.clear()
        alarms: list[AlarmTransition] = []
        for item in out:
            if isinstance(item, Transition):
                if item.alarm:
                    alarms.append(
                        AlarmTransition(
                            item.subject,
                            item.kind,
                            item.state in ACTIVE_STATES,
                            item.message,
                            item.ts,
                            state=item.state,
                            severity=item.severity,
                            rule=item.rule,
                            user=user if item.state == "acknowledged" else None,
                        )
                    )
                else:
                    log.info("rule %s (%s): %s: %s", item.rule, item.subject, item.state, item.message)
            elif isinstance(item, Intent):
                self.writer.want(item)
            else:
                reading = Reading(
                    item.subject, item.name, item.ts, item.state, "", priority=Priority.EVENT, reason=item.message
                )
                self._hub.readings(item.subject, [reading])
        if alarms:
            self._hub.publish(Topic.ALARM, alarms)

    # -- the task ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        engine = self.engine
        assert engine is not None
        while True:
            self._beat()
            now = self._clock()
            engine.advance(now)
            if self._out:
                self._flush()
            await self._maybe_save()
            deadline = engine.next_deadline()
            sleep = MAX_SLEEP_S if deadline is None else min(MAX_SLEEP_S, max(0.0, deadline - self._clock()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sleep):
                    await self._wake.wait()

    async def _maybe_save(self) -> None:
        engine = self.engine
        assert engine is not None
        now = time.monotonic()
        if now < self._retry_at:
            return
        dirty = engine.dirty
        if dirty & URGENT or (dirty & SOON and now - self._saved_at[URGENT] >= SOON_S):
            await self._save(URGENT)
        if dirty & WINDOWS and now - self._saved_at[WINDOWS] >= WINDOWS_S:
            await self._save(WINDOWS)

    async def _save(self, which: int) -> None:
        """Write the state file (``URGENT``) or the windows file (``WINDOWS``) in a worker thread."""
        engine = self.engine
        assert engine is not None
        if which == URGENT:
            data, file, flags = snapshot(engine), self._file, URGENT | SOON
        else:
            data, file, flags = windows_snapshot(engine), self._windows_file, WINDOWS
        engine.dirty &= ~flags
        self._saved_at[which] = time.monotonic()
        try:
            await asyncio.to_thread(file.save, data)
        except OSError as exc:
            engine.dirty |= flags
            self._retry_at = time.monotonic() + SAVE_RETRY_S
            if str(exc) != self._save_error:
                log.error("rules: cannot save %s (%s); trying again every %.0f s", file.path, exc, SAVE_RETRY_S)
            self._save_error = str(exc)
        else:
            if self._save_error is not None:
                log.info("rules: %s saved again", file.path)
            self._save_error = None

    # -- status --------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        engine = self.engine
        return {
            "rules": engine.rule_status() if engine is not None else [],
            "writes": self.writer.pending(),
            "state_file_writes": self._file.writes,
            "windows_file_writes": self._windows_file.writes,
        }
