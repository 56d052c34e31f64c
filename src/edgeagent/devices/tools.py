"""A technician's tools: scan a line or the air, read a device once, write a point.

They run the production code paths (the same transports, runners and decoders as the
agent) for one device or one port, and return plain results for the CLI to print.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgeagent.config import SiteConfig, profiles_for
from edgeagent.devices.build import Runner, build_live, build_runners
from edgeagent.devices.modbus import ModbusDevice
from edgeagent.devices.scheduler import BusPoller
from edgeagent.errors import (
    ConfigError,
    ConfigProblem,
    DecodeError,
    DeviceException,
    DeviceTimeout,
    DeviceUnreachable,
    InvalidWrite,
)
from edgeagent.live import DeviceState, Live, PointValue
from edgeagent.model import Reading
from edgeagent.protocols.modbus import Function

# A tool loads the stack of the bus it talks to when it runs: reading a serial sensor
# needs neither pymodbus nor bleak.
if TYPE_CHECKING:
    from bleak.backends.scanner import BaseBleakScanner

    from edgeagent.transports.ble import Advertisement


@dataclass(frozen=True, slots=True)
class UnitAnswer:
    """A unit id that answered a scan, and how."""

    unit_id: int
    note: str  # "" for a normal answer, else the exception it answered with


async def scan_modbus(
    port: str,
    *,
    baudrate: int,
    bytesize: int = 8,
    parity: str = "N",
    stopbits: int = 1,
    units: Iterable[int] = range(1, 248),
    timeout_s: float = 0.1,
    function: Function = "holding",
    register: int = 0,
    on_found: Callable[[UnitAnswer], None] | None = None,
) -> list[UnitAnswer]:
    """Ask every unit id for one register; any answer (an exception too) means a device is there.

    Raises DeviceUnreachable when the port cannot be opened.
    """
    from edgeagent.transports.modbus import ModbusRtuTransport

    transport = ModbusRtuTransport(
        port, baudrate=baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits, timeout_s=timeout_s
    )
    found: list[UnitAnswer] = []
    try:
        for unit in units:
            try:
                await transport.read(function, register, 1, unit, timeout_s=timeout_s)
            except DeviceTimeout:
                continue
            except DeviceException as exc:
                answer = UnitAnswer(unit, exc.reason.split(" answered ", 1)[-1])
            else:
                answer = UnitAnswer(unit, "")
            found.append(answer)
            if on_found is not None:
                on_found(answer)
    finally:
        await transport.close()
    return found


@dataclass(slots=True)
class Advertiser:
    """One address heard during a BLE scan, with what its last advertisement said."""

    address: str
    rssi: int
    name: str | None
    kind: str = "unknown"
    values: dict[str, object] = field(default_factory=dict)
    count: int = 0


def describe_advertisement(adv: Advertisement) -> tuple[str, dict[str, object]]:
    """What kind of sender this is and its decoded values, as far as no key is needed."""
    from edgeagent.protocols import bthome, ruuvi

    data = adv.service_data.get(bthome.SERVICE_UUID)
    if data is not None:
        try:
            packet = bthome.decode(data, mac=adv.address)
        except DecodeError as exc:
            if data and data[0] & 0x01:
                return "BTHome v2 (encrypted: needs its key)", {}
            return f"BTHome (undecodable: {exc})", {}
        return "BTHome v2", dict(packet.values)
    payload = adv.manufacturer_data.get(ruuvi.MANUFACTURER_ID)
    if payload:
        try:
            reading = ruuvi.decode(payload)
        except DecodeError:
            return f"Ruuvi (format {payload[0]})", {}
        values = {k: getattr(reading, k) for k in ("temperature_c", "humidity_pct", "pressure_pa", "battery_mv")}
        return "RuuviTag format 5", values
    return "unknown", {}


async def scan_ble(
    seconds: float,
    *,
    adapter: str | None = None,
    backend: type[BaseBleakScanner] | None = None,
) -> list[Advertiser]:
    """Listen for ``seconds``; every advertiser heard, strongest first. Raises DeviceUnreachable."""
    from edgeagent.transports.ble import BleScanner

    heard: dict[str, Advertiser] = {}

    def on_advertisement(adv: Advertisement) -> None:
        entry = heard.setdefault(adv.address, Advertiser(adv.address, adv.rssi, adv.local_name))
        entry.rssi, entry.count = adv.rssi, entry.count + 1
        entry.name = adv.local_name or entry.name
        kind, values = describe_advertisement(adv)
        if kind != "unknown" or entry.kind == "unknown":
            entry.kind, entry.values = kind, values

    scanner = BleScanner(on_advertisement, adapter=adapter, backend=backend)
    await scanner.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await scanner.stop()
    return sorted(heard.values(), key=lambda a: -a.rssi)


@dataclass(frozen=True, slots=True)
class DeviceRead:
    """One read of one device: its readings, and the labels of enum values."""

    readings: list[Reading]
    points: dict[str, PointValue]


@dataclass(slots=True)
class _Collector:
    """Readings a runner delivers, with an event for each delivery."""

    readings: list[Reading] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, readings: list[Reading]) -> None:
        self.readings.extend(readings)
        self.arrived.set()


async def _with_runner(
    site: SiteConfig,
    device_id: str,
    ble_backend: type[BaseBleakScanner] | None,
) -> tuple[Live, Runner, _Collector]:
    if device_id not in {d.id for d in site.devices}:
        known = ", ".join(d.id for d in site.devices) or "none"
        raise ConfigError([ConfigProblem("", "devices", f"no device {device_id!r} in the config; known: {known}")])
    profiles = profiles_for(site)
    live = Live(gateway_id=site.gateway.id)
    build_live(site, profiles, live)
    collector = _Collector()
    (runner,) = build_runners(site, profiles, live, collector, only={device_id}, ble_backend=ble_backend)
    return live, runner, collector


async def read_device(
    site: SiteConfig,
    device_id: str,
    *,
    timeout_s: float = 15.0,
    ble_backend: type[BaseBleakScanner] | None = None,
) -> DeviceRead:
    """Poll (or listen to) one device until its first readings; raise DeviceError with the reason."""
    live, runner, collector = await _with_runner(site, device_id, ble_backend)
    state = live.devices[device_id]
    task = asyncio.create_task(runner.run(), name=f"read:{device_id}")
    deadline = time.monotonic() + timeout_s
    try:
        while not collector.readings and state.state not in (DeviceState.DEGRADED, DeviceState.OFFLINE):
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise DeviceTimeout(f"{device_id}: no reading within {timeout_s:g} s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await collector.arrived.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if not collector.readings:
        raise DeviceUnreachable(f"{device_id}: {state.reason}")
    return DeviceRead(list(collector.readings), dict(state.points))


async def write_device(
    site: SiteConfig,
    device_id: str,
    point: str,
    value: str,
    *,
    confirm: Callable[[str], bool],
) -> tuple[str, PointValue | None]:
    """Write one point after ``confirm(question)`` says yes; return what was written and the value read back.

    Raises InvalidWrite for a wrong device, point or value (and when not confirmed), and
    DeviceError when the device does not take the write.
    """
    live, runner, collector = await _with_runner(site, device_id, None)
    if not isinstance(runner, BusPoller):
        raise InvalidWrite(f"{device_id} is not a Modbus device; it takes no writes")
    device = runner.device(device_id)
    if not isinstance(device, ModbusDevice):
        raise InvalidWrite(f"{device_id} is not a Modbus device; it takes no writes")
    plan = device.plan_write(point, value)
    state = live.devices[device_id]
    what = "coil" if plan.function == "coil" else "holding register"
    question = (
        f"write {plan.shown} to {device_id}.{point} ({what} {plan.address}, {state.address} "
        f"on bus {state.bus}, {live.buses[state.bus].target})?"
    )
    if not confirm(question):
        raise InvalidWrite("not confirmed; nothing was written")
    task = asyncio.create_task(runner.run(), name=f"write:{device_id}")
    try:
        await asyncio.sleep(0)  # let the scheduler start before it is handed the write
        shown = await runner.write(device_id, point, value)
        # The scheduler reads the device back right after a write; wait for that poll.
        collector.arrived.clear()
        try:
            async with asyncio.timeout(4 * device.timeout_s + 1):
                await collector.arrived.wait()
        except TimeoutError:
            return shown, None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return shown, state.points.get(point)
