"""The values that flow through the agent, from a device to the store and upstream."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Quality(enum.IntEnum):
    """How far a value can be trusted; stored as a small integer, sent as a SenML extension."""

    GOOD = 0
    MISSING = 1  # the device reported "no value" (e.g. `/////`); the value is None
    UNCERTAIN = 2  # the device flagged the value (a warning status, a saturated sensor)
    INVALID = 3  # the value is outside what the sensor can measure


class Priority(enum.IntEnum):
    """Store classes, in sending order: alarms go upstream before everything else."""

    ALARM = 0
    EVENT = 1
    TELEMETRY = 2


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one point of one device at one time (seconds since the epoch)."""

    device: str
    point: str
    ts: float
    value: float | str | None
    unit: str
    quality: Quality = Quality.GOOD
    priority: Priority = Priority.TELEMETRY
    # True when ``ts`` counts seconds since this boot, not since the epoch: the wall
    # clock was not set when the reading was taken (see edgeagent.clock).
    boot_relative: bool = False
    # Why, for a text value that is a state or an alarm ("no answer from unit 3").
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading as the store hands it back: with its sequence number."""

    seq: int
    device: str
    point: str
    ts: float
    value: float | str | None
    unit: str
    quality: Quality
    priority: Priority
    # The boot id when ``ts`` is seconds since that boot (the wall clock was not set).
    boot: str | None = None
    reason: str | None = None
