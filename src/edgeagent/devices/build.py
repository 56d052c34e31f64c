"""From a validated site config to the runners that own the buses.

The one place that knows which runner and transport each bus kind gets: a polled bus
(Modbus TCP or RTU, a Vaisala PWD line) gets a ``BusPoller``, a radar's port a
``RadarReader``, a BLE adapter a ``BleListener``. The agent runs them; the CLI builds
the same runners for one device to read or write it once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Protocol

from edgeagent.config import (
    BleBus,
    BusConfig,
    DeviceConfig,
    ModbusRtuBus,
    ModbusTcpBus,
    SerialBus,
    SiteConfig,
    serial_settings,
)
from edgeagent.devices.health import StateSink
from edgeagent.devices.modbus import ModbusDevice
from edgeagent.devices.pwd import PwdDevice
from edgeagent.devices.radar import RadarDevice, RadarReader
from edgeagent.devices.scheduler import BusPoller, PolledDevice
from edgeagent.live import BusLive, DeviceLive, Live
from edgeagent.model import Reading
from edgeagent.profiles import (
    BthomeProfile,
    ModbusProfile,
    Profile,
    PwdProfile,
    RadarProfile,
    RuuviProfile,
)
from edgeagent.transports.serial import SerialLine

if TYPE_CHECKING:
    from bleak.backends.scanner import BaseBleakScanner


class Runner(Protocol):
    """What owns a bus: a ``BusPoller``, a ``RadarReader`` or a ``BleListener``."""

    name: str

    @property
    def device_ids(self) -> list[str]: ...

    async def run(self) -> None: ...


def bus_target(bus: BusConfig) -> str:
    """What a bus drives, for people: a port, host:port, or adapter."""
    if isinstance(bus, ModbusTcpBus):
        return f"{bus.host}:{bus.port}"
    if isinstance(bus, BleBus):
        return bus.adapter or "default adapter"
    return bus.port


def device_address(dev: DeviceConfig, profile: Profile) -> str:
    """Where a device sits on its bus, for people."""
    if profile.protocol == "modbus":
        return f"unit {dev.unit_id}"
    if profile.protocol == "vaisala_pwd":
        return f"id {dev.sensor_id or '1'}"
    if profile.protocol in ("bthome", "ruuvi"):
        return dev.mac or ""
    return "data port"


def device_live_of(dev: DeviceConfig, profile: Profile) -> DeviceLive:
    """A device's entry in the live picture, with its asset facts."""
    asset: dict[str, object] = dev.asset.model_dump(exclude_none=True)
    asset.setdefault("model", f"{profile.manufacturer} {profile.model}")
    asset.setdefault("category", profile.asset.category)
    if profile.asset.spec:
        asset.setdefault("spec", profile.asset.spec)
    return DeviceLive(
        id=dev.id,
        profile=dev.profile,
        bus=dev.bus,
        asset=asset,
        protocol=profile.protocol,
        address=device_address(dev, profile),
        fault_points=frozenset(p.name for p in profile.points if p.fault),
    )


def bus_live_of(bus: BusConfig) -> BusLive:
    return BusLive(name=bus.name, kind=bus.kind, target=bus_target(bus))


def build_live(site: SiteConfig, profiles: dict[str, Profile], live: Live) -> None:
    """Enter every device and bus in the live picture."""
    for dev in site.devices:
        live.devices[dev.id] = device_live_of(dev, profiles[dev.profile])
    for bus in site.buses:
        live.buses[bus.name] = bus_live_of(bus)


def polled_devices(bus: BusConfig, configs: Sequence[DeviceConfig], profiles: dict[str, Profile]) -> list[PolledDevice]:
    """The devices of a polled bus (Modbus, or a PWD line), as its scheduler takes them."""
    if isinstance(bus, ModbusTcpBus | ModbusRtuBus):
        bus_timeout_s = bus.timeout_ms / 1000
        out: list[PolledDevice] = []
        for cfg in configs:
            profile = profiles[cfg.profile]
            assert isinstance(profile, ModbusProfile)  # the config's cross-check guarantees it
            out.append(ModbusDevice(cfg, profile, bus_timeout_s=bus_timeout_s))
        return out
    pwd: list[PolledDevice] = []
    for cfg in configs:
        profile = profiles[cfg.profile]
        assert isinstance(profile, PwdProfile)
        pwd.append(PwdDevice(cfg, profile))
    return pwd


def build_runners(
    site: SiteConfig,
    profiles: dict[str, Profile],
    live: Live,
    on_readings: Callable[[list[Reading]], None],
    *,
    beat_for: Callable[[str], Callable[[], None]] | None = None,
    on_alarm: Callable[[str, str], None] | None = None,
    ble_backend: type[BaseBleakScanner] | None = None,
    only: Collection[str] | None = None,
    on_state: StateSink | None = None,
) -> list[Runner]:
    """One runner per bus that has devices (only those in ``only``, when given)."""
    runners: list[Runner] = []
    for bus in site.buses:
        configs = [d for d in site.devices if d.bus == bus.name and (only is None or d.id in only)]
        if not configs:
            continue
        runners.append(
            build_runner(
                bus,
                configs,
                profiles,
                live,
                on_readings,
                beat=beat_for(bus.name) if beat_for is not None else None,
                on_alarm=on_alarm,
                ble_backend=ble_backend,
                on_state=on_state,
            )
        )
    return runners


def build_runner(
    bus: BusConfig,
    configs: Sequence[DeviceConfig],
    profiles: dict[str, Profile],
    live: Live,
    on_readings: Callable[[list[Reading]], None],
    *,
    beat: Callable[[], None] | None = None,
    on_alarm: Callable[[str, str], None] | None = None,
    ble_backend: type[BaseBleakScanner] | None = None,
    on_state: StateSink | None = None,
) -> Runner:
    """The runner of one bus with these devices on it."""
    bus_live = live.buses.get(bus.name)
    if isinstance(bus, ModbusTcpBus | ModbusRtuBus):
        return _modbus_poller(bus, configs, profiles, live, on_readings, beat, bus_live, on_state)
    if isinstance(bus, SerialBus):
        return _serial_runner(bus, configs, profiles, live, on_readings, beat, bus_live, on_state)
    # Imported only for a site with BLE: bleak and the AES code cost memory.
    from edgeagent.devices.ble import BleDevice, BleListener, BthomeDevice, RuuviDevice

    devices: list[BleDevice] = []
    for cfg in configs:
        profile = profiles[cfg.profile]
        if isinstance(profile, BthomeProfile):
            devices.append(BthomeDevice(cfg, profile))
        elif isinstance(profile, RuuviProfile):
            devices.append(RuuviDevice(cfg, profile))
    return BleListener(
        bus,
        devices,
        live.devices,
        on_readings,
        beat=beat,
        bus_live=bus_live,
        on_alarm=on_alarm,
        backend=ble_backend,
        on_state=on_state,
    )


def _modbus_poller(
    bus: ModbusTcpBus | ModbusRtuBus,
    configs: Sequence[DeviceConfig],
    profiles: dict[str, Profile],
    live: Live,
    on_readings: Callable[[list[Reading]], None],
    beat: Callable[[], None] | None,
    bus_live: BusLive | None,
    on_state: StateSink | None = None,
) -> BusPoller:
    # Imported only for a site with a Modbus bus: pymodbus costs memory.
    from edgeagent.transports.modbus import ModbusRtuTransport, ModbusTcpTransport

    bus_timeout_s = bus.timeout_ms / 1000
    devices = polled_devices(bus, configs, profiles)
    # The client's own timeout is the slowest device's; each request is held to its device's.
    client_timeout_s = max([bus_timeout_s, *(d.timeout_s for d in devices)])
    reconnect = {"reconnect_min_s": bus.reconnect_min_ms / 1000, "reconnect_max_s": bus.reconnect_max_ms / 1000}
    transport: ModbusTcpTransport | ModbusRtuTransport
    if isinstance(bus, ModbusTcpBus):
        transport = ModbusTcpTransport(
            bus.host, bus.port, timeout_s=client_timeout_s, inter_frame_s=bus.inter_frame_ms / 1000, **reconnect
        )
    else:
        transport = ModbusRtuTransport(
            bus.port,
            baudrate=bus.baudrate,
            bytesize=bus.bytesize,
            parity=bus.parity,
            stopbits=bus.stopbits,
            timeout_s=client_timeout_s,
            inter_frame_s=None if bus.inter_frame_ms is None else bus.inter_frame_ms / 1000,
            **reconnect,
        )
    return BusPoller(
        bus.name,
        transport,
        devices,
        live.devices,
        on_readings,
        beat=beat,
        bus_live=bus_live,
        close_after_poll=isinstance(bus, ModbusTcpBus) and bus.close_after_poll,
        reopen_after_timeouts=bus.reopen_after_timeouts if isinstance(bus, ModbusTcpBus) else None,
        on_state=on_state,
    )


def _serial_runner(
    bus: SerialBus,
    configs: Sequence[DeviceConfig],
    profiles: dict[str, Profile],
    live: Live,
    on_readings: Callable[[list[Reading]], None],
    beat: Callable[[], None] | None,
    bus_live: BusLive | None,
    on_state: StateSink | None = None,
) -> BusPoller | RadarReader:
    first = profiles[configs[0].profile]
    assert isinstance(first, PwdProfile | RadarProfile)  # the config's cross-check guarantees it
    settings = serial_settings(bus, first)
    line = SerialLine(
        bus.port,
        baudrate=settings.baudrate,
        bytesize=settings.bytesize,
        parity=settings.parity,
        stopbits=settings.stopbits,
        reconnect_min_s=bus.reconnect_min_ms / 1000,
        reconnect_max_s=bus.reconnect_max_ms / 1000,
    )
    if isinstance(first, RadarProfile):
        (cfg,) = configs
        return RadarReader(
            bus.name,
            line,
            RadarDevice(cfg, first),
            live.devices[cfg.id],
            on_readings,
            beat=beat,
            bus_live=bus_live,
            reopen_s=min(1.0, bus.reconnect_min_ms / 1000),
            on_state=on_state,
        )
    devices = polled_devices(bus, configs, profiles)
    return BusPoller(
        bus.name,
        line,
        devices,
        live.devices,
        on_readings,
        beat=beat,
        bus_live=bus_live,
        inter_poll_s=bus.inter_frame_ms / 1000,
        on_state=on_state,
    )
