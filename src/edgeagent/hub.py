"""The one place where everything the agent observes fans out.

Producers (bus runners, device health, sync workers, the agent itself) publish here and
know nothing of who listens; consumers (the store, the upstream state events, later the
rules engine, the page's live stream and ``/metrics``) subscribe. Two kinds of
subscriber, because a bus must never wait for a browser:

- a *listener* is a plain function called synchronously with each published batch; it
  must be fast and must not block (the store's ``append`` is one);
- a *queue* subscriber gets a bounded queue: when it falls behind, the oldest entries
  are dropped (or replaced by the newest of the same key, for state that only the
  latest value of matters) and counted, and the publisher never waits.

A listener that raises is logged once per kind of error and kept; one consumer's bug
must not stop the others from hearing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeagent.model import Reading

log = logging.getLogger(__name__)


class Topic(enum.StrEnum):
    READINGS = "readings"  # ReadingsBatch
    DEVICE_STATE = "device_state"  # DeviceStateChange
    BUS_STATE = "bus_state"  # BusStateChange
    UPLINK_RESULT = "uplink_result"  # UplinkResult
    ALARM = "alarm"  # AlarmTransition


@dataclass(frozen=True, slots=True)
class ReadingsBatch:
    """What one device (or the gateway itself) yielded at once."""

    device: str
    readings: Sequence[Reading]
    labels: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class DeviceStateChange:
    device: str
    state: str  # "online" | "degraded" | "offline"
    previous: str
    reason: str
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class BusStateChange:
    bus: str
    state: str
    detail: str
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class UplinkResult:
    uplink: str
    ok: bool
    detail: str
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class AlarmTransition:
    """An alarm of ``source`` (a device id, or "gateway") changed.

    The gateway's own alarms (``store_corrupt``, ``ble_scanner_stalled``) only go active
    and clear; a rule's alarm has a lifecycle (``state``: raised, acknowledged, cleared,
    and a reminder while it stays raised unacknowledged), a severity and its rule.
    """

    source: str  # a device id, or "gateway"
    kind: str  # store_corrupt; a rule's name; "<rule>:stale"; "action_failed:<point>"
    active: bool
    message: str
    ts: float = field(default_factory=time.time)
    state: str = ""  # "raised" | "acknowledged" | "cleared" | "reminder"; "" for the gateway's own
    severity: str = ""
    rule: str | None = None  # None: one of the gateway's own alarms
    user: str | None = None  # who acknowledged it

    @property
    def lifecycle_state(self) -> str:
        return self.state or ("raised" if self.active else "cleared")


Listener = Callable[[Sequence[Any]], None]


class QueueSubscription:
    """A bounded queue of published entries for a consumer that may be slow."""

    def __init__(self, hub: Hub, topics: frozenset[Topic], maxlen: int, key: Callable[[Any], Hashable] | None) -> None:
        self._hub = hub
        self.topics = topics
        self.maxlen = maxlen
        self._key = key
        self._entries: OrderedDict[Hashable, tuple[Topic, Any]] = OrderedDict()
        self._serial = 0
        self._ready = asyncio.Event()
        self.dropped = 0
        self.coalesced = 0

    def _offer(self, topic: Topic, entries: Sequence[Any]) -> None:
        for entry in entries:
            if self._key is not None:
                k: Hashable = (topic, self._key(entry))
                if k in self._entries:
                    del self._entries[k]
                    self.coalesced += 1
            else:
                self._serial += 1
                k = self._serial
            self._entries[k] = (topic, entry)
            if len(self._entries) > self.maxlen:
                self._entries.popitem(last=False)
                self.dropped += 1
        self._ready.set()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self) -> tuple[Topic, Any]:
        """The oldest entry still held; waits for one."""
        while not self._entries:
            self._ready.clear()
            await self._ready.wait()
        _, item = self._entries.popitem(last=False)
        return item

    def close(self) -> None:
        self._hub._queues.remove(self)


class Hub:
    """Publish/subscribe inside the process: synchronous listeners and bounded queues."""

    def __init__(self) -> None:
        self._listeners: dict[Topic, list[Listener]] = {t: [] for t in Topic}
        self._queues: list[QueueSubscription] = []
        self._errors: set[tuple[str, str]] = set()
        self.published: dict[Topic, int] = dict.fromkeys(Topic, 0)

    def listen(self, topic: Topic, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every batch published on ``topic``; returns the unsubscribe."""
        self._listeners[topic].append(listener)
        return lambda: self._listeners[topic].remove(listener)

    def queue(
        self, *topics: Topic, maxlen: int = 1000, key: Callable[[Any], Hashable] | None = None
    ) -> QueueSubscription:
        """A bounded queue of entries of ``topics``; with ``key``, a newer entry replaces an older one."""
        sub = QueueSubscription(self, frozenset(topics), maxlen, key)
        self._queues.append(sub)
        return sub

    def publish(self, topic: Topic, entries: Sequence[Any]) -> None:
        if not entries:
            return
        self.published[topic] += len(entries)
        for listener in self._listeners[topic]:
            try:
                listener(entries)
            except Exception as exc:  # one consumer's bug must not silence the others
                key = (getattr(listener, "__qualname__", repr(listener)), type(exc).__name__)
                if key not in self._errors:
                    self._errors.add(key)
                    log.exception("a %s listener failed (logged once): %s", topic.value, exc)
        for sub in self._queues:
            if topic in sub.topics:
                sub._offer(topic, entries)

    # Conveniences for producers -------------------------------------------------------

    def readings(self, device: str, readings: Sequence[Reading], labels: Mapping[str, str] | None = None) -> None:
        self.publish(Topic.READINGS, [ReadingsBatch(device, readings, labels)])

    def device_state(self, device: str, state: str, previous: str, reason: str) -> None:
        self.publish(Topic.DEVICE_STATE, [DeviceStateChange(device, state, previous, reason)])

    def bus_state(self, bus: str, state: str, detail: str) -> None:
        self.publish(Topic.BUS_STATE, [BusStateChange(bus, state, detail)])

    def uplink_result(self, uplink: str, ok: bool, detail: str) -> None:
        self.publish(Topic.UPLINK_RESULT, [UplinkResult(uplink, ok, detail)])

    def alarm(self, source: str, kind: str, active: bool, message: str) -> None:
        self.publish(Topic.ALARM, [AlarmTransition(source, kind, active, message)])

    def stats(self) -> dict[str, object]:
        return {
            "published": {t.value: n for t, n in self.published.items()},
            "queues": [
                {"topics": sorted(t.value for t in q.topics), "held": len(q), "dropped": q.dropped}
                for q in self._queues
            ],
        }
