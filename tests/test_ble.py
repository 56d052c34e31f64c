"""BLE through bleak's own backend seam: BTHome v2 (plain and encrypted) and RuuviTag.

Only the radio is simulated (a ``BaseBleakScanner`` subclass given to bleak as
``backend=``); bleak's ``BleakScanner``, the agent's scanner transport, listener and
decoders are the production ones. One test runs real bleak on this machine, which has
no system D-Bus, to check that error is turned into a clear reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgeagent.config import SiteConfig, parse_config
from edgeagent.devices.ble import BleListener
from edgeagent.devices.build import build_live, build_runners
from edgeagent.errors import DeviceUnreachable
from edgeagent.live import Live
from edgeagent.model import Quality, Reading
from edgeagent.profiles import load_profile
from edgeagent.protocols import bthome
from edgeagent.sim.ble import BthomeManholeSensor, PhoneNoise, RuuviTagSim, SimulatedRadio
from edgeagent.sim.water_level import RainEvent
from edgeagent.transports.ble import BleScanner
from tests.helpers import wait_until

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
MH_KEYED = "54:48:E6:8F:80:A5"
MH_PLAIN = "54:48:E6:8F:80:B2"
RUUVI = "C8:25:2D:8E:9C:10"


def _site(*, watchdog_s: float = 30.0, key_file: Path | None = None, stale_after_s: float = 1.0) -> SiteConfig:
    keyed: dict[str, Any] = {"key_file": str(key_file)} if key_file else {"key": KEY.hex()}
    devices = [
        {"id": "mh-keyed", "profile": "bthome_manhole_water", "mac": MH_KEYED, **keyed},
        {"id": "mh-plain", "profile": "bthome_manhole_water", "mac": MH_PLAIN.lower()},
        {"id": "cabinet", "profile": "ruuvitag", "mac": RUUVI},
    ]
    return parse_config(
        {
            "gateway": {"id": "gw-test"},
            "buses": [
                {
                    "name": "ble",
                    "kind": "ble",
                    "watchdog_s": watchdog_s,
                    "reconnect_min_ms": 200,
                    "reconnect_max_ms": 400,
                }
            ],
            "devices": [
                {**d, "bus": "ble", "stale_after_s": stale_after_s, "asset": {"location": "here", "owner": "tests"}}
                for d in devices
            ],
        }
    )


class Run:
    def __init__(self, site: SiteConfig, radio: SimulatedRadio) -> None:
        self.live = Live(gateway_id="gw-test")
        profiles = {d.profile: load_profile(d.profile) for d in site.devices}
        build_live(site, profiles, self.live)
        self.readings: list[Reading] = []
        self.alarms: list[tuple[str, str]] = []
        (runner,) = build_runners(
            site,
            profiles,
            self.live,
            self.readings.extend,
            ble_backend=radio.backend(),
            on_alarm=lambda kind, message: self.alarms.append((kind, message)),
        )
        assert isinstance(runner, BleListener)
        self.listener = runner

    def values(self, device: str, point: str) -> list[float | None]:
        return [r.value for r in self.readings if r.device == device and r.point == point]


def _radio() -> SimulatedRadio:
    return SimulatedRadio(
        [
            BthomeManholeSensor(MH_KEYED, key=KEY, interval_s=0.1, rain=RainEvent(period_s=5, start_phase=0.45)),
            BthomeManholeSensor(MH_PLAIN, interval_s=0.1),
            RuuviTagSim(RUUVI, interval_s=0.1, seed=1),
            PhoneNoise("4C:11:22:33:44:55", interval_s=0.1),
        ]
    )


@contextlib.asynccontextmanager
async def running(site: SiteConfig, radio: SimulatedRadio) -> AsyncIterator[Run]:
    run = Run(site, radio)
    async with radio:
        task = asyncio.create_task(run.listener.run(), name="ble-listener")
        try:
            yield run
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert not radio.scanning, "the scanner was stopped"


async def test_encrypted_plain_and_ruuvi_devices_report_values() -> None:
    async with running(_site(), _radio()) as run:
        live = run.live.devices
        await wait_until(lambda: all(d.polls_ok >= 3 for d in live.values()), 5, "every device heard")
    distance = run.values("mh-keyed", "water_distance")
    assert distance and all(0 <= v <= 1500 for v in distance)
    assert run.values("mh-keyed", "water_present")[-1] == 1.0  # the rain event is at its peak
    assert run.values("mh-plain", "battery")[-1] == 87.0
    assert run.values("cabinet", "pressure")[-1] == pytest.approx(1005, abs=3)
    assert run.values("mh-keyed", "rssi")[-1] == -78.0
    assert live["cabinet"].rssi_dbm == -65 and live["mh-keyed"].address == MH_KEYED
    # The simulated senders repeat every advertisement; repeats give no second reading.
    packets = len(run.values("mh-plain", "battery"))
    assert packets <= live["mh-plain"].polls_ok
    assert all(d.rejected == 0 and d.replayed == 0 for d in live.values())


async def test_wrong_key_replay_and_plain_spoof_are_rejected_and_counted() -> None:
    radio = _radio()
    async with running(_site(), radio) as run:
        keyed = run.live.devices["mh-keyed"]
        await wait_until(lambda: keyed.polls_ok >= 2, 5, "the keyed sensor heard")
        sensor = radio.advertisers[0]
        assert isinstance(sensor, BthomeManholeSensor)
        old = sensor.last_payload
        before = len(run.readings)
        await wait_until(lambda: sensor.last_payload != old, 2, "a newer packet")
        # A replay of an older packet (not a plain repeat of the last one).
        radio.emit(MH_KEYED, service_data={bthome.SERVICE_UUID: old})
        # A packet sealed with someone else's key.
        wrong = bthome.encode_encrypted([(0x20, True)], mac=MH_KEYED, key=bytes(16), counter=10**6)
        radio.emit(MH_KEYED, service_data={bthome.SERVICE_UUID: wrong})
        # A plain packet pretending to be the keyed sensor.
        radio.emit(MH_KEYED, service_data={bthome.SERVICE_UUID: bthome.encode([(0x20, False)], packet_id=1)})
        await wait_until(lambda: keyed.replayed >= 1 and keyed.rejected >= 2, 2, "the refusals counted")
    spoofed = [r for r in run.readings[before:] if r.device == "mh-keyed" and r.point == "water_present"]
    assert all(r.value == 1.0 for r in spoofed), "no value from a refused packet got through"
    assert keyed.state.value == "online"


async def test_key_file_and_unreadable_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "mh.key"
    key_file.write_text(KEY.hex() + "\n")
    async with running(_site(key_file=key_file), _radio()) as run:
        await wait_until(lambda: run.live.devices["mh-keyed"].polls_ok >= 1, 5, "heard with the key from the file")
    async with running(_site(key_file=tmp_path / "missing.key"), _radio()) as run:
        await wait_until(lambda: run.live.devices["mh-plain"].polls_ok >= 1, 5, "the others heard")
        keyed = run.live.devices["mh-keyed"]
        assert keyed.state.value == "offline" and "cannot read key file" in keyed.reason


async def test_a_silent_device_goes_stale_and_comes_back() -> None:
    radio = _radio()
    async with running(_site(stale_after_s=0.6), radio) as run:
        plain = run.live.devices["mh-plain"]
        await wait_until(lambda: plain.state.value == "online", 5, "online")
        sensor = radio.advertisers[1]
        radio.advertisers.remove(sensor)
        await wait_until(lambda: plain.state.value == "offline", 5, "stale")
        assert "no advertisement for" in plain.reason
        assert run.live.devices["cabinet"].state.value == "online"
        radio.advertisers.append(sensor)
        await radio.stop()
        await radio.start()  # the air loop picks up the returned sender
        await wait_until(lambda: plain.state.value == "online", 5, "back")


async def test_watchdog_restarts_a_silent_scanner_then_escalates(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgeagent.devices.ble")
    radio = _radio()
    async with running(_site(watchdog_s=0.5, stale_after_s=30), radio) as run:
        bus = run.live.buses["ble"]
        await wait_until(lambda: bus.state == "ok" and run.listener.advertisements > 0, 5, "scanning")
        starts = radio.starts
        radio.deaf = True  # BlueZ stopped delivering, without an error
        await wait_until(lambda: radio.starts > starts and bus.state == "stalled", 5, "a watchdog restart")
        assert "no advertisements for" in bus.detail
        await wait_until(lambda: run.alarms, 8, "the escalation")
        assert run.alarms[0][0] == "ble_scanner_stalled"
        assert "escalated" in bus.detail
        radio.deaf = False
        await wait_until(lambda: bus.state == "ok", 10, "hearing again")
    assert bus.restarts >= 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum("restarting scanning" in m for m in messages) == 1
    assert sum("still hears nothing" in m for m in messages) == 1
    assert any("hears advertisements again" in m for m in messages)


async def test_no_dbus_is_a_clear_reason_for_ble_devices_only() -> None:
    radio = _radio()
    radio.available = False  # start() raises FileNotFoundError, as bleak does without D-Bus
    async with running(_site(), radio) as run:
        await wait_until(lambda: all(d.state.value == "offline" for d in run.live.devices.values()), 5, "offline")
        for device in run.live.devices.values():
            assert "no system D-Bus" in device.reason
        assert run.live.buses["ble"].state == "down"
        radio.available = True  # the adapter appears: retried with backoff, no restart needed
        await wait_until(lambda: all(d.state.value == "online" for d in run.live.devices.values()), 5, "online")


async def test_real_bleak_without_dbus_raises_our_error() -> None:
    scanner = BleScanner(lambda adv: None)
    with pytest.raises(DeviceUnreachable, match="no system D-Bus"):
        await scanner.start()
    assert not scanner.scanning


def test_missing_values_of_a_ruuvi_become_absent_readings() -> None:
    from edgeagent.devices.ble import RuuviDevice
    from edgeagent.protocols import ruuvi
    from edgeagent.protocols.ruuvi import RuuviDf5
    from edgeagent.transports.ble import Advertisement

    site = _site()
    cfg = next(d for d in site.devices if d.id == "cabinet")
    profile = load_profile("ruuvitag")
    device = RuuviDevice(cfg, profile)  # type: ignore[arg-type]
    payload = ruuvi.encode(
        RuuviDf5(
            temperature_c=None,
            humidity_pct=40.0,
            pressure_pa=None,
            acceleration_x_mg=None,
            acceleration_y_mg=None,
            acceleration_z_mg=None,
            battery_mv=3000,
            tx_power_dbm=None,
            movement_counter=None,
            sequence=7,
            mac=None,
        )
    )
    adv = Advertisement(RUUVI, -60, None, {}, {ruuvi.MANUFACTURER_ID: payload}, 0.0)
    values = device.decode(adv)
    assert values is not None
    readings = {r.point: r for r in device.readings(values, adv.rssi, 1.0)}
    assert readings["temperature"].value is None and readings["temperature"].quality == Quality.MISSING
    assert readings["pressure"].value is None
    assert readings["humidity"].value == 40.0
    assert device.decode(adv) is None, "the same measurement sequence again is not a new reading"
