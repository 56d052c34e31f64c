"""A simulated Vaisala PWD22 on a pty: answers polls for message 2 or 7 like the sensor.

The weather follows a fog-and-drizzle story: visibility sinks and recovers, drizzle
starts as the fog thickens. Faults can be switched on: ``silent`` (no answers),
``missing`` (fields the sensor reports as slashes, e.g. luminance without a luminance
meter), ``hardware_status`` (1 error, 2 warning), and ``garble_next`` (the next answer
is preceded by line noise and cut short, as a loose RS-485 pair does).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Iterable

from edgeagent.protocols.vaisala_pwd import decode_poll, encode_frame
from edgeagent.sim.serial_pty import PtySimulator

_POLL = re.compile(rb"\r?\x05(?:PW|FD) +[0-9A-Za-z]{1,2} +[0-9]{1,2}\r")
_MAX_BUFFER = 1024


class PwdSimulator(PtySimulator):
    """One or more PWD sensor ids sharing one simulated line."""

    def __init__(
        self,
        *,
        sensor_ids: Iterable[str] = ("1",),
        response_delay_s: float = 0.02,
        fog_period_s: float = 240.0,
    ) -> None:
        super().__init__()
        self.sensor_ids = set(sensor_ids)
        self.response_delay_s = response_delay_s
        self.fog_period_s = fog_period_s
        self.silent = False
        self.missing: set[str] = set()
        self.hardware_status = 0
        self.garble_next = 0  # how many of the next answers to garble
        self.polls = 0
        self.answers = 0
        self._buffer = bytearray()
        self._t0 = time.monotonic()
        self._water_sum = 12.16

    def _on_data(self, data: bytes) -> None:
        self._buffer += data
        while (match := _POLL.search(self._buffer)) is not None:
            poll = decode_poll(match.group(0))
            del self._buffer[: match.end()]
            self.polls += 1
            if self.silent or poll.sensor_id not in self.sensor_ids:
                continue
            self._spawn(self._answer(poll.sensor_id, poll.message), name="sim-pwd-answer")
        if len(self._buffer) > _MAX_BUFFER:
            del self._buffer[:-64]

    async def _answer(self, sensor_id: str, message: int) -> None:
        await asyncio.sleep(self.response_delay_s)
        frame = encode_frame(sensor_id, self.body(message))
        if self.garble_next:
            self.garble_next -= 1
            frame = b"\x7f\xfe noise \x00" + frame[: len(frame) // 2]
        if self._pty is not None and self._pty.write(frame):
            self.answers += 1

    def visibility_m(self, now: float | None = None) -> float:
        t = (time.monotonic() if now is None else now) - self._t0
        x = (t % self.fog_period_s) / self.fog_period_s
        depth = max(0.0, math.sin(2 * math.pi * x)) ** 2
        return 15_000 * (1 - depth) + 150 * depth

    def body(self, message: int) -> str:
        """The message body as the sensor prints it, slashes for missing fields."""
        now = time.monotonic()
        vis1 = self.visibility_m(now)
        vis10 = self.visibility_m(now - 300)
        drizzle = vis1 < 1000
        intensity = 0.12 if drizzle else 0.0
        self._water_sum += intensity / 3600
        alarm = 2 if vis1 < 500 else 1 if vis1 < 1000 else 0
        fields = {
            "status": f"{alarm}{self.hardware_status}",
            "visibility_1min_m": f"{vis1:.0f}",
            "visibility_10min_m": f"{vis10:.0f}",
            "nws_code": "L-" if drizzle else "C",
            "wmo_present_weather": "51" if drizzle else ("30" if vis1 < 1000 else "0"),
            "wmo_15min": "51" if drizzle else "0",
            "wmo_1h": "51" if drizzle else "0",
            "precipitation_intensity_mm_h": f"{intensity:.2f}",
            "water_sum_mm": f"{self._water_sum:.2f}",
            "snow_sum_mm": "0",
            "temperature_c": f"{8.5 + math.sin(now / 900):.1f}",
            "luminance_cd_m2": f"{2500 + 500 * math.sin(now / 300):.0f}",
        }
        for name in self.missing:
            if name in fields:
                fields[name] = "/" * max(2, len(fields[name]))
        values = list(fields.values())
        line = " ".join(values[:10] if message == 2 else values)
        if message == 2:
            return line
        metar = "-DZ BR" if drizzle else ""
        return f"{line}\r\n{metar}\r\n{'REDZ' if drizzle else ''}\r\n"
