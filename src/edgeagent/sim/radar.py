"""A simulated TI mmWave radar on a pty: a stream of TLV frames of passing traffic.

Vehicles approach in the lane at 10-25 m/s from 60 m; the radar sends a frame every
``frame_period_s``. Faults: ``silent`` stops the stream; ``inject_garbage`` puts noise
between frames; ``chunk_bytes`` splits writes, so frames arrive cut at random places.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any

from edgeagent.protocols.ti_mmwave import RadarPoint, encode_frame
from edgeagent.sim.serial_pty import PtySimulator


class RadarSimulator(PtySimulator):
    """The radar's UART data port."""

    def __init__(self, *, frame_period_s: float = 0.1, seed: int | None = None, chunk_bytes: int = 0) -> None:
        super().__init__()
        self.frame_period_s = frame_period_s
        self.chunk_bytes = chunk_bytes
        self.silent = False
        self.frames_sent = 0
        self._garbage = b""
        self._rng = random.Random(seed)
        self._vehicles: list[list[float]] = []  # [range_m, speed_m_s]
        self.vehicle_speed_m_s: float | None = None  # a test's traffic: every vehicle at this speed

    def _background(self) -> Coroutine[Any, Any, None]:
        return self._stream()  # the data port is output only: what the agent writes is ignored

    def inject_garbage(self, data: bytes) -> None:
        """Send these bytes before the next frame."""
        self._garbage += data

    def next_frame(self) -> bytes:
        """Advance the traffic by one frame period and encode what the radar sees."""
        dt = self.frame_period_s
        for v in self._vehicles:
            v[0] -= v[1] * dt
        self._vehicles = [v for v in self._vehicles if v[0] > 2.0]
        if self.vehicle_speed_m_s is not None:
            for v in self._vehicles:
                v[1] = self.vehicle_speed_m_s
            if not self._vehicles:
                self._vehicles.append([60.0, self.vehicle_speed_m_s])
        elif len(self._vehicles) < 3 and self._rng.random() < 0.08:
            self._vehicles.append([60.0, self._rng.uniform(10.0, 25.0)])
        points = [
            RadarPoint(
                x_m=self._rng.uniform(-1.5, 1.5),
                y_m=rng_m,
                z_m=0.5,
                velocity_m_s=-speed,
                snr_db=round(self._rng.uniform(12, 30), 1),
                noise_db=round(self._rng.uniform(40, 60), 1),
            )
            for rng_m, speed in self._vehicles
        ]
        self.frames_sent += 1
        return encode_frame(self.frames_sent, points, time_cpu_cycles=self.frames_sent * 1000)

    async def _stream(self) -> None:
        while True:
            await asyncio.sleep(self.frame_period_s)
            frame = self.next_frame()
            if self.silent or self._pty is None:
                continue
            data, self._garbage = self._garbage + frame, b""
            if not self.chunk_bytes:
                self._pty.write(data)
                continue
            for i in range(0, len(data), self.chunk_bytes):
                self._pty.write(data[i : i + self.chunk_bytes])
                await asyncio.sleep(0)
