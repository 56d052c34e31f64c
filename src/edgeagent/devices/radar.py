"""A TI mmWave radar streaming on its own serial port: read, resync, sum up per interval.

The reader owns the port. Whatever arrives goes into the stream decoder, which skips
garbage and cut frames (counted as framing errors on the device) and hands back whole
frames; when the line goes quiet the decoder is flushed, so a frame whose tail looked
like the start of the next magic word is not held back. Frames are summed up into one
set of readings per report interval. No frames for ``stale_after_s`` makes the radar
offline; the port vanishing does too, and it is reopened with backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from edgeagent.config import DeviceConfig
from edgeagent.devices.health import Health, StateSink
from edgeagent.errors import DeviceTimeout, DeviceUnreachable
from edgeagent.live import BusLive, DeviceLive
from edgeagent.model import Quality, Reading
from edgeagent.profiles import RadarProfile
from edgeagent.protocols.ti_mmwave import RadarFrame, RadarStreamDecoder
from edgeagent.transports.serial import SerialLine

QUIET_S = 0.2
"""A pause this long in the stream ends the frame in flight (frames come every 30-100 ms)."""


class RadarDevice:
    """Sums up frames between reports: most targets in one frame, nearest range, fastest approach."""

    protocol = "ti_mmwave"

    def __init__(self, cfg: DeviceConfig, profile: RadarProfile) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.profile = profile
        self.report_interval_s = cfg.poll_interval_s or profile.report_interval_s
        self.stale_after_s = cfg.stale_after_s or profile.stale_after_s
        self._frames = 0
        self._targets = 0
        self._nearest: float | None = None
        self._approach: float | None = None

    @property
    def address(self) -> str:
        return "data port"

    @property
    def frames_pending(self) -> int:
        return self._frames

    def add(self, frames: Sequence[RadarFrame]) -> None:
        for f in frames:
            self._frames += 1
            self._targets = max(self._targets, f.target_count)
            if f.nearest_range_m is not None and (self._nearest is None or f.nearest_range_m < self._nearest):
                self._nearest = f.nearest_range_m
            if f.approach_speed_m_s is not None and (self._approach is None or f.approach_speed_m_s > self._approach):
                self._approach = f.approach_speed_m_s

    def report(self, ts: float) -> list[Reading]:
        """Readings for the interval that ends now; starts the next interval."""
        summary: dict[str, float | None] = {
            "target_count": self._targets,
            "nearest_range_m": self._nearest,
            "approach_speed_m_s": self._approach,
            "frames": self._frames,
        }
        self._frames, self._targets, self._nearest, self._approach = 0, 0, None, None
        out = []
        for p in self.profile.points:
            raw = summary[p.field]
            if raw is None:  # nothing seen, or nothing approaching: an absent value, not zero
                out.append(Reading(self.id, p.name, ts, None, p.unit, Quality.MISSING))
            else:
                out.append(Reading(self.id, p.name, ts, round(float(raw) * p.scale + p.offset, 6), p.unit))
        return out


class RadarReader:
    """The owner of a radar's serial port."""

    def __init__(
        self,
        name: str,
        line: SerialLine,
        device: RadarDevice,
        live: DeviceLive,
        on_readings: Callable[[list[Reading]], None],
        *,
        beat: Callable[[], None] | None = None,
        bus_live: BusLive | None = None,
        reopen_s: float = 1.0,
        on_state: StateSink | None = None,
    ) -> None:
        self.name = name
        self.line = line
        self.device = device
        self.health = Health(live, offline_after=device.cfg.offline_after_failures, on_state=on_state)
        self.on_readings = on_readings
        self.bus_live = bus_live
        self.reopen_s = reopen_s
        self.decoder = RadarStreamDecoder()
        self._beat = beat or (lambda: None)

    @property
    def device_ids(self) -> list[str]:
        return [self.device.id]

    async def run(self) -> None:
        interval = self.device.report_interval_s
        started = time.monotonic()
        last_frame = started
        next_report = started + interval
        try:
            while True:
                self._beat()
                now = time.monotonic()
                try:
                    chunk = await self.line.read(max(0.01, min(QUIET_S, next_report - now)))
                except DeviceTimeout:
                    frames = self.decoder.flush()
                except DeviceUnreachable as exc:
                    self.decoder.reset()
                    self.health.went_offline(exc.reason)
                    self._bus("down", exc.reason)
                    await asyncio.sleep(self.reopen_s)
                    continue
                else:
                    self._bus("ok", "")
                    frames = self.decoder.feed(chunk)
                self.health.live.framing_errors = self.decoder.framing_errors
                if frames:
                    last_frame = time.monotonic()
                    self.device.add(frames)
                now = time.monotonic()
                if now >= next_report:
                    next_report = max(next_report + interval, now)
                    if self.device.frames_pending:
                        readings = self.device.report(time.time())
                        self.health.succeeded(readings)
                        self.on_readings(readings)
                    elif now - last_frame > self.device.stale_after_s:
                        self.health.went_offline(f"no radar frames for {now - last_frame:.0f} s")
        finally:
            await self.line.close()

    def _bus(self, state: str, detail: str) -> None:
        if self.bus_live is not None:
            self.bus_live.set_state(state, detail)
