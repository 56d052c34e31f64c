"""Simulated BLE advertisers, heard through bleak's own backend seam.

``SimulatedRadio`` is the air around the gateway: advertisers (BTHome manhole sensors,
RuuviTags, a passing phone) send on their intervals, and every scanner started through
``radio.backend()`` (a ``BaseBleakScanner`` subclass given to bleak as ``backend=``)
hears them, through bleak's ``BleakScanner`` and the agent's real scanner code. The
radio can be switched ``unavailable`` (``start()`` raises ``FileNotFoundError`` as bleak
does without a system D-Bus) or ``deaf`` (scanning runs, nothing arrives: BlueZ's
silent stop), and ``emit`` sends one crafted advertisement (a replay, a wrong key).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner

from edgeagent.protocols import bthome, ruuvi
from edgeagent.protocols.ruuvi import RuuviDf5
from edgeagent.sim.serial_pty import BackgroundSimulator
from edgeagent.sim.water_level import RainEvent


class SimAdvertiser:
    """Something that advertises: an address, an interval, and what it sends."""

    def __init__(self, address: str, *, interval_s: float = 1.0, rssi: int = -70, name: str | None = None) -> None:
        self.address = address.upper()
        self.interval_s = interval_s
        self.rssi = rssi
        self.name = name
        self.sent = 0

    def payload(self) -> tuple[dict[str, bytes], dict[int, bytes]]:
        """Service data and manufacturer data of the next advertisement."""
        return {}, {}


class BthomeManholeSensor(SimAdvertiser):
    """A manhole water sensor: water presence and cover-to-water distance, plain or encrypted."""

    def __init__(
        self,
        address: str,
        *,
        key: bytes | None = None,
        depth_mm: int = 1500,
        rain: RainEvent | None = None,
        interval_s: float = 1.0,
        rssi: int = -78,
    ) -> None:
        super().__init__(address, interval_s=interval_s, rssi=rssi, name="manhole")
        self.key = key
        self.depth_mm = depth_mm
        self.rain = rain or RainEvent(period_s=300.0, peak_mm=900.0)
        self.counter = 1000
        self.packet_id = 0
        self.battery_pct = 87
        self.last_payload = b""

    def payload(self) -> tuple[dict[str, bytes], dict[int, bytes]]:
        water_mm = self.rain.level_mm()
        self.packet_id = (self.packet_id + 1) % 256
        objects: list[tuple[int, bthome.Value]] = [
            (0x01, self.battery_pct),
            (0x02, round(11.0 + math.sin(time.monotonic() / 500), 2)),
            (0x20, water_mm > 50),
            (0x40, max(0, round(self.depth_mm - water_mm))),
        ]
        if self.key is None:
            data = bthome.encode(objects, packet_id=self.packet_id)
        else:
            self.counter += 1
            data = bthome.encode_encrypted(
                objects, mac=self.address, key=self.key, counter=self.counter, packet_id=self.packet_id
            )
        self.last_payload = data
        return {bthome.SERVICE_UUID: data}, {}


class RuuviTagSim(SimAdvertiser):
    """A RuuviTag in a roadside cabinet."""

    def __init__(self, address: str, *, interval_s: float = 1.0, rssi: int = -65, seed: int | None = None) -> None:
        super().__init__(address, interval_s=interval_s, rssi=rssi, name="Ruuvi")
        self.sequence = 0
        self._rng = random.Random(seed)

    def payload(self) -> tuple[dict[str, bytes], dict[int, bytes]]:
        self.sequence = (self.sequence + 1) % 0xFFFF
        now = time.monotonic()
        reading = RuuviDf5(
            temperature_c=round(21.0 + 3 * math.sin(now / 400) + self._rng.gauss(0, 0.05), 2),
            humidity_pct=round(55.0 + 5 * math.sin(now / 700), 2),
            pressure_pa=100_500 + round(200 * math.sin(now / 1000)),
            acceleration_x_mg=4,
            acceleration_y_mg=-8,
            acceleration_z_mg=1000,
            battery_mv=2950,
            tx_power_dbm=4,
            movement_counter=12,
            sequence=self.sequence,
            mac=self.address,
        )
        return {}, {ruuvi.MANUFACTURER_ID: ruuvi.encode(reading)}


class PhoneNoise(SimAdvertiser):
    """A passer-by's phone: advertisements the agent must hear (watchdog) and ignore."""

    def payload(self) -> tuple[dict[str, bytes], dict[int, bytes]]:
        return {}, {0x004C: b"\x10\x05\x01\x18\x44\x83\x1c"}


class SimulatedRadio(BackgroundSimulator):
    """The air: advertisers, and the scanners listening to them."""

    def __init__(self, advertisers: list[SimAdvertiser] | None = None) -> None:
        super().__init__()
        self.advertisers = list(advertisers or [])
        self.available = True
        self.deaf = False
        self.starts = 0
        self.delivered = 0
        self._scanners: set[_SimScanner] = set()

    def backend(self) -> type[BaseBleakScanner]:
        """A bleak backend class bound to this radio, for ``BleakScanner(backend=...)``."""
        return type("SimulatedBleakScanner", (_SimScanner,), {"radio": self})

    @property
    def scanning(self) -> bool:
        return bool(self._scanners)

    async def start(self) -> None:
        self._spawn(self._air(), name="sim-ble-radio")

    def emit(
        self,
        address: str,
        *,
        service_data: dict[str, bytes] | None = None,
        manufacturer_data: dict[int, bytes] | None = None,
        rssi: int = -70,
        name: str | None = None,
    ) -> None:
        """Deliver one advertisement now to every scanner (unless the radio is deaf)."""
        if self.deaf:
            return
        data = AdvertisementData(
            local_name=name,
            manufacturer_data=manufacturer_data or {},
            service_data=service_data or {},
            service_uuids=list((service_data or {}).keys()),
            tx_power=None,
            rssi=rssi,
            platform_data=(),
        )
        for scanner in list(self._scanners):
            scanner.hear(address.upper(), name, data)
            self.delivered += 1

    async def _air(self) -> None:
        due = {id(a): time.monotonic() + i * 0.05 for i, a in enumerate(self.advertisers)}
        while True:
            now = time.monotonic()
            for adv in self.advertisers:
                if due[id(adv)] <= now:
                    due[id(adv)] = now + adv.interval_s
                    service, manufacturer = adv.payload()
                    adv.sent += 1
                    # BLE senders repeat each advertisement; so does the simulation.
                    for _ in range(2):
                        self.emit(
                            adv.address,
                            service_data=service,
                            manufacturer_data=manufacturer,
                            rssi=adv.rssi,
                            name=adv.name,
                        )
            wait = min(due.values(), default=now + 1.0) - time.monotonic()
            await asyncio.sleep(max(0.01, wait))


class _SimScanner(BaseBleakScanner):
    """bleak's backend interface, fed by a SimulatedRadio instead of BlueZ."""

    radio: SimulatedRadio

    def __init__(self, detection_callback: Any, service_uuids: Any, *args: Any, **kwargs: Any) -> None:
        # bleak also passes the scanning mode and per-platform options; a radio has no use for them.
        super().__init__(detection_callback, service_uuids)

    async def start(self) -> None:
        self.radio.starts += 1
        if not self.radio.available:
            raise FileNotFoundError(2, "No such file or directory")
        self.seen_devices = {}
        self.radio._scanners.add(self)

    async def stop(self) -> None:
        self.radio._scanners.discard(self)

    def hear(self, address: str, name: str | None, data: AdvertisementData) -> None:
        if not self.is_allowed_uuid(data.service_uuids):
            return
        device: BLEDevice = self.create_or_update_device(address, address, name, None, data)
        self.call_detection_callbacks(device, data)
