"""Devices: a profile at an address on a bus, and the runners that own each bus.

- ``scheduler.BusPoller``: polled buses (Modbus TCP and RTU, Vaisala PWD lines).
- ``radar.RadarReader``: a serial port a radar streams frames on.
- ``ble.BleListener``: a BLE adapter's scanner, with its watchdog.
- ``build.build_runners``: the one place that turns a site config into runners.
"""

from edgeagent.devices.health import Health
from edgeagent.devices.modbus import ModbusDevice, WritePlan
from edgeagent.devices.scheduler import BusPoller

__all__ = ["BusPoller", "Health", "ModbusDevice", "WritePlan"]
