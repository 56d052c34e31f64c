"""BLE advertisements via bleak: start and stop scanning, hand each advertisement on.

This is the only module that imports bleak. Advertisements leave it as our own
``Advertisement`` (address, signal strength, service and manufacturer data), and
bleak's failures leave it as ``DeviceUnreachable`` with a reason a technician can act
on: no system D-Bus (bleak raises ``FileNotFoundError``), no adapter or Bluetooth off
(``BleakError`` and its subclasses), or a BlueZ refusal.

``backend`` is bleak's own seam (a ``BaseBleakScanner`` subclass): the tests and the
demo pass a simulated radio there; production leaves it ``None`` (BlueZ on Linux).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from edgeagent.errors import DeviceUnreachable

START_TIMEOUT_S = 15.0
"""Longest wait for BlueZ to start or stop discovery; a hung D-Bus call must not hang the agent."""


@dataclass(frozen=True, slots=True)
class Advertisement:
    """One received advertisement, as the rest of the agent sees it."""

    address: str
    rssi: int
    local_name: str | None
    service_data: dict[str, bytes]
    manufacturer_data: dict[int, bytes]
    monotonic: float


class BleScanner:
    """One adapter's scanner; ``on_advertisement`` runs on the event loop for every advertisement."""

    def __init__(
        self,
        on_advertisement: Callable[[Advertisement], None],
        *,
        adapter: str | None = None,
        scanning_mode: Literal["active", "passive"] = "active",
        backend: type[BaseBleakScanner] | None = None,
    ) -> None:
        self._on_advertisement = on_advertisement
        self.adapter = adapter
        self.scanning_mode = scanning_mode
        self.backend = backend
        self._scanner: BleakScanner | None = None

    @property
    def label(self) -> str:
        return self.adapter or "the default Bluetooth adapter"

    @property
    def scanning(self) -> bool:
        return self._scanner is not None

    def _callback(self, device: BLEDevice, data: AdvertisementData) -> None:
        self._on_advertisement(
            Advertisement(
                address=device.address.upper(),
                rssi=data.rssi,
                local_name=data.local_name,
                service_data=dict(data.service_data),
                manufacturer_data=dict(data.manufacturer_data),
                monotonic=time.monotonic(),
            )
        )

    async def start(self) -> None:
        """Start scanning with a fresh bleak scanner; raise DeviceUnreachable if the radio is not there."""
        if self._scanner is not None:
            return
        bluez: dict[str, Any] = {"adapter": self.adapter} if self.adapter else {}
        try:
            scanner = BleakScanner(
                self._callback,
                scanning_mode=self.scanning_mode,
                bluez=bluez,  # type: ignore[arg-type]
                backend=self.backend,
            )
            async with asyncio.timeout(START_TIMEOUT_S):
                await scanner.start()
        except FileNotFoundError as exc:
            reason = f"BLE unavailable on {self.label}: no system D-Bus (is dbus/bluetoothd running?)"
            raise DeviceUnreachable(reason) from exc
        except TimeoutError as exc:
            raise DeviceUnreachable(f"BLE scanning on {self.label} did not start within {START_TIMEOUT_S:g} s") from exc
        except (BleakError, OSError) as exc:
            raise DeviceUnreachable(f"BLE unavailable on {self.label}: {exc or type(exc).__name__}") from exc
        self._scanner = scanner

    async def stop(self) -> None:
        """Stop scanning; a radio that went away while scanning is not an error here."""
        scanner, self._scanner = self._scanner, None
        if scanner is None:
            return
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await scanner.stop()
        except (BleakError, OSError, TimeoutError):
            # Stopping is best effort: the next start() builds a new scanner anyway.
            return
