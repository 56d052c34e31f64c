"""Simulated Modbus devices: register maps with the manners of real ones.

A ``SimUnit`` answers reads and writes the way field devices do: an address outside its
map is exception 02, a write to a read-only register or of a value it cannot take is
02 or 03, and a read touching a range its profile forbids is recorded in
``forbidden_reads`` (and answered with exception 02) so a test can fail on it. A unit
can fall ``silent`` (a dead or unplugged device: requests go unanswered). Subclasses
model one device each and refresh their values from a physical story (a rain event,
fog, a lamp's load) whenever they are read.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable

from edgeagent.protocols.modbus import encode_value
from edgeagent.sim.water_level import RainEvent

ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03

TABLES = ("coil", "discrete", "holding", "input")


class SimException(Exception):
    """Answer the request with this Modbus exception code."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"exception {code:02X}")


class SimUnit:
    """One unit id's tables and behaviour."""

    model = "generic"

    def __init__(
        self,
        *,
        holding: int = 0,
        input: int = 0,
        coils: int = 0,
        discrete: int = 0,
        forbidden: Iterable[tuple[str, int, int]] = (),
        writable: Iterable[tuple[str, int]] = (),
    ) -> None:
        self.tables: dict[str, list[int]] = {
            "holding": [0] * holding,
            "input": [0] * input,
            "coil": [0] * coils,
            "discrete": [0] * discrete,
        }
        self.forbidden = [(f, lo, hi) for f, lo, hi in forbidden]
        self.writable = set(writable)
        self.forbidden_reads: list[tuple[str, int, int]] = []
        self.silent = False
        self.reads = 0
        self.writes = 0

    def refresh(self, now: float) -> None:
        """Bring dynamic values up to date before a read (subclasses model their physics here)."""

    def read(self, table: str, address: int, count: int) -> list[int]:
        """Answer a read; raise SimException for what a real device would refuse."""
        for function, lo, hi in self.forbidden:
            if function == table and address <= hi and lo < address + count:
                self.forbidden_reads.append((table, address, count))
                raise SimException(ILLEGAL_ADDRESS)
        values = self.tables[table]
        if address + count > len(values):
            raise SimException(ILLEGAL_ADDRESS)
        self.refresh(time.monotonic())
        self.reads += 1
        return values[address : address + count]

    def write(self, table: str, address: int, values: list[int]) -> None:
        """Apply a write; raise SimException if any address is not writable or a value is refused."""
        if address + len(values) > len(self.tables[table]):
            raise SimException(ILLEGAL_ADDRESS)
        for i, value in enumerate(values):
            if (table, address + i) not in self.writable:
                raise SimException(ILLEGAL_ADDRESS)
            self.check_write(table, address + i, value)
        self.tables[table][address : address + len(values)] = values
        self.writes += 1

    def check_write(self, table: str, address: int, value: int) -> None:
        """Refuse a value this device cannot take (subclasses); default: any value."""


class WaterLevelUnit(SimUnit):
    """The generic water-level transmitter: holding 3 unit code, 4 decimals, 6 value; 2 reserved."""

    model = "generic_water_level"

    def __init__(self, *, rain: RainEvent | None = None, decimals: int = 1, unit_code: int = 2) -> None:
        super().__init__(holding=16, forbidden=[("holding", 2, 2)])
        self.rain = rain or RainEvent()
        self.decimals = decimals
        self.unit_code = unit_code
        self.fixed_level_mm: float | None = None
        h = self.tables["holding"]
        h[1] = 3  # baud code 9600

    def refresh(self, now: float) -> None:
        level = self.fixed_level_mm if self.fixed_level_mm is not None else self.rain.level_mm(now)
        per_unit = {1: 10.0, 2: 1.0, 3: 1000.0}[self.unit_code]
        h = self.tables["holding"]
        h[3] = self.unit_code
        h[4] = self.decimals
        h[6] = encode_value(round(level / per_unit * 10**self.decimals), "int16")[0]


class Urm13Unit(SimUnit):
    """A URM13-like ultrasonic sensor above a road dip: distance (cm) shrinks as water rises."""

    model = "urm13_ultrasonic"
    NO_ECHO = 0xFFFF

    def __init__(self, *, mount_height_cm: int = 250, rain: RainEvent | None = None, address: int = 0x0D) -> None:
        super().__init__(holding=0x0B)
        self.mount_height_cm = mount_height_cm
        self.rain = rain or RainEvent(peak_mm=300.0)
        self.no_echo = False
        h = self.tables["holding"]
        h[0], h[1], h[2], h[3] = 0x0003, 0x0010, address, 0x0005

    def refresh(self, now: float) -> None:
        h = self.tables["holding"]
        if self.no_echo:
            h[5] = self.NO_ECHO
        else:
            h[5] = max(0, round(self.mount_height_cm - self.rain.level_mm(now) / 10))
        h[6] = encode_value(round(10 * (18.0 + 4 * math.sin(now / 600))), "int16")[0]


class VisibilityUnit(SimUnit):
    """A forward-scatter visibility sensor: float32 CDAB input registers; 4-7 unmapped (exception 02)."""

    model = "generic_visibility_modbus"

    def __init__(self, *, fog_period_s: float = 300.0, seed: int | None = None) -> None:
        super().__init__(input=0x0B, forbidden=[("input", 4, 7)])
        self.fog_period_s = fog_period_s
        self._t0 = time.monotonic()
        self._rng = random.Random(seed)
        self.status_bits = 0
        self.fixed_visibility_m: float | None = None  # a test's fog, instead of the drifting banks

    def visibility_m(self, now: float) -> float:
        """Fog banks drifting past: clear (10 km) down to 80 m and back."""
        if self.fixed_visibility_m is not None:
            return self.fixed_visibility_m
        x = ((now - self._t0) % self.fog_period_s) / self.fog_period_s
        depth = max(0.0, math.sin(2 * math.pi * x)) ** 3
        return max(10.0, 10_000.0 * (1 - depth) + 80.0 * depth + self._rng.gauss(0, 5))

    def refresh(self, now: float) -> None:
        t = self.tables["input"]
        v1 = self.visibility_m(now)
        t[0:2] = encode_value(v1, "float32", "CDAB")
        t[2:4] = encode_value(v1 * 1.05, "float32", "CDAB")
        t[8] = self.status_bits
        t[9:11] = encode_value(12.5 + math.sin(now / 900), "float32", "CDAB")


class LampControllerUnit(SimUnit):
    """A lamp controller: dimming and mode written, metering follows the dim level and relay."""

    model = "smart_lamp_controller"
    RATED_W = 120.0

    def __init__(self, *, dim_level: int = 70, lamp_on: bool = True) -> None:
        super().__init__(
            holding=2,
            input=6,
            coils=1,
            discrete=1,
            writable=[("holding", 0), ("holding", 1), ("coil", 0)],
        )
        self.tables["holding"][0] = dim_level
        self.tables["holding"][1] = 1  # schedule
        self.tables["coil"][0] = 1 if lamp_on else 0
        self.energy_wh = 123_456.0
        self._last = time.monotonic()
        self.failed = False

    def check_write(self, table: str, address: int, value: int) -> None:
        if table == "holding" and address == 0 and value > 100:
            raise SimException(ILLEGAL_VALUE)
        if table == "holding" and address == 1 and value > 3:
            raise SimException(ILLEGAL_VALUE)

    def power_w(self) -> float:
        on = self.tables["coil"][0] and not self.failed
        return self.RATED_W * self.tables["holding"][0] / 100 if on else 0.0

    def refresh(self, now: float) -> None:
        power = self.power_w()
        self.energy_wh += power * (now - self._last) / 3600
        self._last = now
        voltage = 229.0 + 2.0 * math.sin(now / 60)
        t = self.tables["input"]
        t[0] = round(voltage * 10)
        t[1] = round(power / voltage * 1000)
        t[2] = round(power * 10)
        t[3:5] = encode_value(round(self.energy_wh / 10), "uint32")
        t[5] = 1 if self.failed else 0


class SignControllerUnit(SimUnit):
    """A roadside sign controller: coil 0 closure panel, holding 0 speed limit (km/h), discrete 0 fault.

    ``refuse_writes`` (a Modbus exception code) answers every write with that exception,
    as a controller in a fault state does; ``stuck`` acknowledges writes and keeps its
    values (a welded relay, a controller switched to local control); ``reboot()`` brings
    it back blank (panel off, no limit), as after a power dip. ``changes`` records each value a write changed, with
    the time, so a test can see the sign light up and go dark.
    """

    model = "generic_sign_controller"
    SPEED_STEP = 10
    SPEED_MAX = 130

    def __init__(self) -> None:
        super().__init__(holding=1, coils=1, discrete=1, writable=[("coil", 0), ("holding", 0)])
        self.refuse_writes: int | None = None
        self.stuck = False
        self.changes: list[tuple[float, str, int]] = []  # (monotonic time, "closure" | "speed_limit", value)
        self.reboots = 0

    @property
    def closure(self) -> int:
        return self.tables["coil"][0]

    @property
    def speed_limit(self) -> int:
        return self.tables["holding"][0]

    def check_write(self, table: str, address: int, value: int) -> None:
        if self.refuse_writes is not None:
            raise SimException(self.refuse_writes)
        if table == "holding" and (value % self.SPEED_STEP or value > self.SPEED_MAX):
            raise SimException(ILLEGAL_VALUE)

    def write(self, table: str, address: int, values: list[int]) -> None:
        before = (self.closure, self.speed_limit)
        if self.stuck:
            for i, value in enumerate(values):
                self.check_write(table, address + i, value)
            return
        super().write(table, address, values)
        now = time.monotonic()
        if self.closure != before[0]:
            self.changes.append((now, "closure", self.closure))
        if self.speed_limit != before[1]:
            self.changes.append((now, "speed_limit", self.speed_limit))

    def reboot(self) -> None:
        """Power dip: every value is lost."""
        self.tables["coil"][0] = 0
        self.tables["holding"][0] = 0
        self.reboots += 1
