"""Every simulated device of the roadside demo site, started together.

``RoadsideSite`` stands up what ``config/demo.toml`` names: a Modbus TCP waterlogging
sensor, an RS-485 line of nine RTU devices (at real line timing; a sign controller the
rules switch among them), a Vaisala PWD22 and a
TI radar on their own ptys, and a BLE radio with manhole sensors and a RuuviTag.
``fill`` points a parsed config's buses at them. The demo and the site test use it, so
both run the production code paths end to end.
"""

from __future__ import annotations

import copy
from typing import Any

from bleak.backends.scanner import BaseBleakScanner

from edgeagent.sim.ble import BthomeManholeSensor, PhoneNoise, RuuviTagSim, SimulatedRadio
from edgeagent.sim.modbus_rtu import RtuBusSimulator
from edgeagent.sim.modbus_units import (
    LampControllerUnit,
    SignControllerUnit,
    SimUnit,
    Urm13Unit,
    VisibilityUnit,
    WaterLevelUnit,
)
from edgeagent.sim.pwd import PwdSimulator
from edgeagent.sim.radar import RadarSimulator
from edgeagent.sim.water_level import RainEvent, WaterLevelSimulator

DEMO_BTHOME_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
"""The BTHome specification's example key, which demo.toml gives device mh-01."""
MANHOLE_ENCRYPTED = "54:48:E6:8F:80:A5"
MANHOLE_PLAIN = "54:48:E6:8F:80:B2"
RUUVI_CABINET = "C8:25:2D:8E:9C:10"


def rtu_units(rain_period_s: float = 120.0) -> dict[int, SimUnit]:
    """The pole's RS-485 line, by unit id, as demo.toml configures it."""
    return {
        1: WaterLevelUnit(rain=RainEvent(period_s=rain_period_s, start_phase=0.2, seed=1)),
        2: WaterLevelUnit(rain=RainEvent(period_s=rain_period_s, start_phase=0.3, peak_mm=220, seed=2), decimals=2),
        3: WaterLevelUnit(rain=RainEvent(period_s=rain_period_s, start_phase=0.25, seed=3), unit_code=1),
        13: Urm13Unit(rain=RainEvent(period_s=rain_period_s, start_phase=0.3, peak_mm=400, seed=4)),
        20: VisibilityUnit(seed=5),
        21: VisibilityUnit(fog_period_s=420.0, seed=6),
        31: LampControllerUnit(dim_level=70),
        32: LampControllerUnit(dim_level=40),
        40: SignControllerUnit(),
    }


class RoadsideSite:
    """The simulators behind demo.toml."""

    def __init__(self, *, line_timing: bool = True, rain_period_s: float = 120.0) -> None:
        self.tcp_sensor = WaterLevelSimulator(
            unit_ids=[1], rain=RainEvent(period_s=rain_period_s, start_phase=0.12, seed=0)
        )
        self.rtu = RtuBusSimulator(rtu_units(rain_period_s), baudrate=9600, line_timing=line_timing)
        self.pwd = PwdSimulator(sensor_ids=["1"])
        self.radar = RadarSimulator(seed=7)
        self.radio = SimulatedRadio(
            [
                BthomeManholeSensor(MANHOLE_ENCRYPTED, key=DEMO_BTHOME_KEY, rain=RainEvent(period_s=rain_period_s)),
                BthomeManholeSensor(MANHOLE_PLAIN, rain=RainEvent(period_s=rain_period_s, start_phase=0.3)),
                RuuviTagSim(RUUVI_CABINET, seed=8),
                PhoneNoise("4C:11:22:33:44:55", interval_s=0.5, rssi=-88),
            ]
        )

    @property
    def sign(self) -> SignControllerUnit:
        """The closure / speed-limit sign on the RS-485 line (unit 40, ``sign-01``)."""
        unit = self.rtu.units[40]
        assert isinstance(unit, SignControllerUnit)
        return unit

    @property
    def ble_backend(self) -> type[BaseBleakScanner]:
        return self.radio.backend()

    async def __aenter__(self) -> RoadsideSite:
        await self.tcp_sensor.start()
        await self.rtu.start()
        await self.pwd.start()
        await self.radar.start()
        await self.radio.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.radio.stop()
        await self.radar.stop()
        await self.pwd.stop()
        await self.rtu.stop()
        await self.tcp_sensor.stop()

    def fill(self, data: dict[str, Any]) -> dict[str, Any]:
        """A copy of a parsed demo config with its buses pointed at these simulators.

        Serial buses run 8N1 here: ptys refuse parity and 7-bit settings, whatever the
        device's real framing (the PWD's 7E1 stays in its profile for production).
        """
        data = copy.deepcopy(data)
        profiles = {d["bus"]: d["profile"] for d in data.get("devices", [])}
        for bus in data.get("buses", []):
            kind = bus["kind"]
            if kind == "modbus_tcp":
                bus["host"], bus["port"] = self.tcp_sensor.host, self.tcp_sensor.port
            elif kind == "modbus_rtu":
                bus["port"] = self.rtu.port
            elif kind == "serial":
                radar = profiles.get(bus["name"], "").startswith("ti_mmwave")
                bus["port"] = self.radar.port if radar else self.pwd.port
                bus.update(bytesize=8, parity="N", stopbits=1)
        return data
