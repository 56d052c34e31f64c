"""BLE sensors (BTHome v2, RuuviTag) and the listener that owns an adapter's scanner.

BLE devices are not polled: they advertise, and every advertisement of every device
near the gateway reaches one scanner callback. The listener routes each by address to
its device, which decodes it and says whether it brought anything new (senders repeat
each advertisement several times). Per device: a wrong key, a corrupt packet or a plain
packet from a keyed device is rejected and counted; a replayed counter is counted apart;
no accepted advertisement for ``stale_after_s`` makes the device offline.

The scanner watchdog: BlueZ is known to stop delivering advertisements without an
error (after a bluetoothd or D-Bus restart). No advertisement from anyone for
``watchdog_s`` restarts scanning; still nothing after two restarts escalates: an alarm
(status page and upstream) and further restarts with a growing delay. No adapter or no
D-Bus makes the BLE devices offline with that reason; nothing else is affected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from bleak.backends.scanner import BaseBleakScanner

from edgeagent.backoff import Backoff
from edgeagent.config import BleBus, DeviceConfig
from edgeagent.devices.health import Health, StateSink
from edgeagent.errors import ConfigError, DecodeError, DeviceUnreachable
from edgeagent.live import BusLive, DeviceLive
from edgeagent.model import Quality, Reading
from edgeagent.preflight import bthome_key
from edgeagent.profiles import BthomeProfile, FieldPoint, RuuviProfile
from edgeagent.protocols import bthome, ruuvi
from edgeagent.protocols.bthome import BTHomeDecryptor, BTHomeReplayError
from edgeagent.transports.ble import Advertisement, BleScanner

log = logging.getLogger(__name__)

ESCALATE_AFTER_RESTARTS = 2
"""Watchdog restarts without a single advertisement before the silence is raised as an alarm."""
CHECK_EVERY_S = 1.0

Values = dict[str, float | int | bool | None]


def read_key(cfg: DeviceConfig) -> bytes | None:
    """The device's BTHome key from ``key`` or ``key_file``; raise DeviceUnreachable if unusable.

    ``run`` refuses a bad key file before start (preflight); this is a file changed since,
    or a tool reading one device: the device is shown offline with the reason.
    """
    try:
        return bthome_key(cfg)
    except ConfigError as exc:
        raise DeviceUnreachable(exc.problems[0].message) from exc


class BleDevice:
    """What BTHome and Ruuvi devices share: address, staleness, turning values into readings."""

    protocol = ""

    def __init__(self, cfg: DeviceConfig, points: list[FieldPoint], stale_after_s: float) -> None:
        if cfg.mac is None:
            raise ValueError(f"device {cfg.id} has no MAC address")
        self.cfg = cfg
        self.id = cfg.id
        self.mac = cfg.mac.upper()
        self.points = points
        self.stale_after_s = cfg.stale_after_s or stale_after_s
        self.setup_error: str | None = None  # a reason it cannot work at all (an unreadable key)

    @property
    def address(self) -> str:
        return self.mac

    def decode(self, adv: Advertisement) -> Values | None:
        """The advertisement's values; None when it is not ours or nothing new. Raises DecodeError."""
        raise NotImplementedError

    def readings(self, values: Values, rssi: int, ts: float) -> list[Reading]:
        out = []
        for p in self.points:
            raw = rssi if p.field == "rssi_dbm" else values.get(p.field, ...)
            if raw is ...:
                continue  # not in this packet (sensors rotate what they send)
            if raw is None:
                out.append(Reading(self.id, p.name, ts, None, p.unit, Quality.MISSING))
            else:
                out.append(Reading(self.id, p.name, ts, round(float(raw) * p.scale + p.offset, 9), p.unit))
        return out


class BthomeDevice(BleDevice):
    """A BTHome v2 sender; with a key only encrypted packets with a rising counter are taken."""

    protocol = "bthome"

    def __init__(self, cfg: DeviceConfig, profile: BthomeProfile) -> None:
        super().__init__(cfg, profile.points, profile.stale_after_s)
        self._decryptor: BTHomeDecryptor | None = None
        try:
            key = read_key(cfg)
        except DeviceUnreachable as exc:
            self.setup_error = exc.reason
            key = None
        if key is not None:
            self._decryptor = BTHomeDecryptor(mac=self.mac, key=key)
        self._last: bytes | None = None
        self._last_packet_id: int | None = None

    def decode(self, adv: Advertisement) -> Values | None:
        data = adv.service_data.get(bthome.SERVICE_UUID)
        if data is None:
            return None
        if data == self._last:
            return None  # the same advertisement again
        decryptor = self._decryptor
        packet = decryptor.decode(data) if decryptor is not None else bthome.decode(data, mac=self.mac)
        self._last = data
        if packet.packet_id is not None:
            if packet.packet_id == self._last_packet_id:
                return None  # a new copy of a reading already taken
            self._last_packet_id = packet.packet_id
        return {k: v for k, v in packet.values.items() if isinstance(v, int | float | bool)}


class RuuviDevice(BleDevice):
    """A RuuviTag sending data format 5; repeats of one measurement sequence are dropped."""

    protocol = "ruuvi"

    def __init__(self, cfg: DeviceConfig, profile: RuuviProfile) -> None:
        super().__init__(cfg, profile.points, profile.stale_after_s)
        self._last_sequence: int | None = None

    def decode(self, adv: Advertisement) -> Values | None:
        data = adv.manufacturer_data.get(ruuvi.MANUFACTURER_ID)
        if data is None or not data or data[0] != ruuvi.DATA_FORMAT:
            return None  # another Ruuvi format, or not a Ruuvi payload at all
        reading = ruuvi.decode(data)
        if reading.sequence is not None and reading.sequence == self._last_sequence:
            return None
        self._last_sequence = reading.sequence
        return {name: getattr(reading, name) for name in ruuvi.NUMERIC_FIELDS}


class BleListener:
    """The owner of one adapter: scanning, routing, staleness and the watchdog."""

    def __init__(
        self,
        bus: BleBus,
        devices: Sequence[BleDevice],
        live: dict[str, DeviceLive],
        on_readings: Callable[[list[Reading]], None],
        *,
        beat: Callable[[], None] | None = None,
        bus_live: BusLive | None = None,
        on_alarm: Callable[[str, str], None] | None = None,
        backend: type[BaseBleakScanner] | None = None,
        on_state: StateSink | None = None,
    ) -> None:
        self.name = bus.name
        self.bus = bus
        self.devices = {d.mac: d for d in devices}
        self.health = {
            d.mac: Health(live[d.id], offline_after=d.cfg.offline_after_failures, on_state=on_state) for d in devices
        }
        self.on_readings = on_readings
        self.bus_live = bus_live
        self.on_alarm = on_alarm
        self._beat = beat or (lambda: None)
        self.scanner = BleScanner(
            self._on_advertisement, adapter=bus.adapter, scanning_mode=bus.scanning_mode, backend=backend
        )
        self._retry = Backoff(bus.reconnect_min_ms / 1000, bus.reconnect_max_ms / 1000, full_jitter=False)
        self._last_any = time.monotonic()
        self._last_seen = {mac: time.monotonic() for mac in self.devices}
        self._next_restart = 0.0
        self._silence_restarts = 0
        self._escalated = False
        self.advertisements = 0

    @property
    def device_ids(self) -> list[str]:
        return [d.id for d in self.devices.values()]

    def _on_advertisement(self, adv: Advertisement) -> None:
        self._last_any = adv.monotonic
        self.advertisements += 1
        device = self.devices.get(adv.address)
        if device is None or device.setup_error is not None:
            return
        health = self.health[adv.address]
        try:
            values = device.decode(adv)
        except BTHomeReplayError:
            health.live.replayed += 1
            return
        except DecodeError as exc:
            health.live.rejected += 1
            log.debug("%s: rejected advertisement: %s", device.id, exc)
            return
        health.live.rssi_dbm = adv.rssi
        self._last_seen[adv.address] = adv.monotonic
        if values is None:
            if health.offline:  # a repeat still proves the device is alive
                health.succeeded([])
            return
        readings = device.readings(values, adv.rssi, time.time())
        health.succeeded(readings)
        self.on_readings(readings)

    async def run(self) -> None:
        """Scan until cancelled; never raises for a missing radio (its devices show why instead)."""
        for device in self.devices.values():
            if device.setup_error is not None:
                self.health[device.mac].went_offline(device.setup_error)
        try:
            while True:
                self._beat()
                if not self.scanner.scanning:
                    await self._start(fresh=True)
                    continue
                await asyncio.sleep(CHECK_EVERY_S)
                self._check_stale()
                await self._watchdog()
        finally:
            await self.scanner.stop()

    async def _start(self, *, fresh: bool) -> bool:
        """Start scanning; on failure mark the devices offline and wait out the retry delay."""
        try:
            await self.scanner.start()
        except DeviceUnreachable as exc:
            self._bus("down", exc.reason)
            for mac, health in self.health.items():
                if self.devices[mac].setup_error is None:
                    health.went_offline(exc.reason)
            deadline = time.monotonic() + self._retry.next_delay()
            while (left := deadline - time.monotonic()) > 0:  # keep checking in while waiting
                await asyncio.sleep(min(CHECK_EVERY_S, left))
                self._beat()
            return False
        if fresh:
            # Silence and staleness count from when listening began, not from before.
            now = time.monotonic()
            self._last_any = now
            self._next_restart = now
            self._last_seen = {mac: max(seen, now) for mac, seen in self._last_seen.items()}
            self._retry.reset()
            self._bus("ok", "")
        return True

    def _check_stale(self) -> None:
        now = time.monotonic()
        for mac, device in self.devices.items():
            if device.setup_error is not None:
                continue
            silent = now - self._last_seen[mac]
            if silent > device.stale_after_s:
                self.health[mac].went_offline(f"no advertisement for {silent:.0f} s")

    async def _watchdog(self) -> None:
        now = time.monotonic()
        silent = now - self._last_any
        if silent <= self.bus.watchdog_s:
            if self._silence_restarts:
                log.info("BLE scanner %s hears advertisements again", self.name)
                self._silence_restarts = 0
                self._escalated = False
                self._retry.reset()
                self._bus("ok", "")
            return
        if now < self._next_restart:
            return
        self._silence_restarts += 1
        if self.bus_live is not None:
            self.bus_live.restarts += 1
        detail = f"no advertisements for {silent:.0f} s; scanning restarted {self._silence_restarts} time(s)"
        if self._silence_restarts == 1:
            log.warning("BLE scanner %s heard nothing for %.0f s: restarting scanning", self.name, silent)
        elif self._silence_restarts > ESCALATE_AFTER_RESTARTS and not self._escalated:
            self._escalated = True
            log.error("BLE scanner %s still hears nothing after %d restarts", self.name, self._silence_restarts - 1)
            if self.on_alarm is not None:
                self.on_alarm("ble_scanner_stalled", f"BLE scanner {self.name}: {detail}")
        if self._escalated:
            detail += "; escalated: alarm raised, retrying with growing delay"
        self._bus("stalled", detail)
        await self.scanner.stop()
        await self._start(fresh=False)
        # The next restart waits a full watchdog period; past the escalation, longer each time.
        extra = self._retry.next_delay() if self._escalated else 0.0
        self._next_restart = time.monotonic() + self.bus.watchdog_s + extra

    def _bus(self, state: str, detail: str) -> None:
        if self.bus_live is not None:
            self.bus_live.set_state(state, detail)
