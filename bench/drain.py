"""Drain a large backlog upstream through the real sync worker: HTTP and MQTT.

A store is filled with 1,000,000 readings (10 devices x 5 points, polled every second,
values that drift with sensor noise at each sensor's resolution), then drained by a
real ``SyncWorker`` to:
- ``HttpUplink`` -> a minimal aiohttp receiver in its own process (so it does not share
  this event loop), which counts the bytes it receives: request line, headers and body;
- ``MqttUplink`` -> a Mosquitto started here, whose own counter
  (``$SYS/broker/bytes/received``) gives the bytes it received.
Bytes are application-layer bytes (TCP/IP headers and TLS are not counted).

Prints readings/s, bytes on the wire per reading, and this process's RSS (VmRSS, sampled
every 0.5 s: start, max, end). Targets: >= 50,000 readings/s, <= 20 bytes/reading, RSS
flat within 10 MB.
Run: python bench/drain.py [--readings N] [--only http|mqtt] [--batch N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
from aiohttp import ClientSession, web

from edgeagent.config import HttpUplinkConfig, MqttUplinkConfig
from edgeagent.live import UplinkLive
from edgeagent.model import Reading
from edgeagent.store import Store, open_core_for_bench
from edgeagent.sync.worker import SyncWorker
from edgeagent.uplinks import Uplink
from edgeagent.uplinks.http import HttpUplink
from edgeagent.uplinks.mqtt import MqttUplink

GATEWAY = "gw-bench-0001"
FILL_CHUNK = 10_000
RSS_EVERY_S = 0.5
SYS_BYTES_TOPIC = "$SYS/broker/bytes/received"
START_TIMEOUT_S = 10.0
# (point, unit, start, drift per poll, noise, decimals): what a roadside station reports.
POINTS = [
    ("water_level", "mm", 40.0, 0.8, 1.5, 1),
    ("air_temperature", "Cel", 12.0, 0.02, 0.05, 1),
    ("relative_humidity", "%RH", 70.0, 0.05, 0.3, 1),
    ("visibility", "m", 8000.0, 25.0, 40.0, 0),
    ("road_surface_temperature", "Cel", 9.0, 0.03, 0.05, 2),
]


# -- the backlog ------------------------------------------------------------------------


def readings(total: int, devices: int = 10) -> Iterator[list[Reading]]:
    """Chunks of readings as pollers produce them: every device once a second, all its points."""
    rng = random.Random(7)
    level = {(d, p[0]): p[2] + rng.uniform(-0.1, 0.1) * p[2] for d in range(devices) for p in POINTS}
    t0 = time.time() - total / (devices * len(POINTS))
    chunk: list[Reading] = []
    made = 0
    tick = 0
    while made < total:
        for d in range(devices):
            ts = round(t0 + tick + rng.uniform(0, 0.2), 3)
            for point, unit, _, drift, noise, decimals in POINTS:
                key = (d, point)
                level[key] += rng.gauss(0, drift)
                value = round(level[key] + rng.gauss(0, noise), decimals)
                chunk.append(Reading(f"station-{d + 1:02d}", point, ts, value, unit))
                made += 1
                if len(chunk) == FILL_CHUNK or made == total:
                    yield chunk
                    chunk = []
                if made == total:
                    return
        tick += 1


def fill(path: Path, total: int) -> float:
    """Commit ``total`` readings; return readings/s of the fill (for reference only)."""
    core = open_core_for_bench(path)
    started = time.perf_counter()
    for chunk in readings(total):
        core.commit(chunk)
    elapsed = time.perf_counter() - started
    core.close()
    return total / elapsed


# -- measuring --------------------------------------------------------------------------


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@dataclass(slots=True)
class Rss:
    samples: list[float] = field(default_factory=list)

    async def sample(self) -> None:
        while True:
            self.samples.append(rss_mb())
            await asyncio.sleep(RSS_EVERY_S)


@dataclass(slots=True)
class Result:
    name: str
    readings: int
    seconds: float
    wire_bytes: int
    rss: list[float]

    def line(self) -> str:
        rate = self.readings / self.seconds
        per = self.wire_bytes / self.readings
        start, peak, end = self.rss[0], max(self.rss), self.rss[-1]
        return (
            f"{self.name:<6} {self.readings:>10,} {self.seconds:>8.1f} {rate:>12,.0f} {per:>15.2f}"
            f"   {start:6.1f} / {peak:6.1f} / {end:6.1f}  (max - start {peak - start:+.1f})"
        )


async def drain(name: str, store: Store, uplink: Uplink, total: int, batch: int) -> tuple[float, list[float]]:
    """Run a real SyncWorker until ``total`` readings are acknowledged; return (seconds, RSS samples)."""
    live = UplinkLive(name=name, kind=name, target=uplink.target)
    worker = SyncWorker(
        store,
        uplink,
        live,
        gateway_id=GATEWAY,
        batch_max_readings=batch,
        retry_min_s=0.05,
        retry_max_s=1.0,
        rejected_retry_s=1.0,
    )
    rss = Rss()
    sampler = asyncio.create_task(rss.sample(), name="rss-sampler")
    await asyncio.sleep(0)
    started = time.perf_counter()
    task = asyncio.create_task(worker.run(), name=f"sync:{name}")
    while live.readings_sent < total:
        if task.done():
            task.result()
            raise RuntimeError(f"{name}: worker ended after {live.readings_sent} readings")
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    worker.stop()
    await task
    rss.samples.append(rss_mb())
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    if live.failures:
        print(f"  ({name}: {live.failures} failed attempts, last: {live.last_result})")
    return elapsed, rss.samples


# -- HTTP: a receiver in its own process ------------------------------------------------


def serve_receiver() -> None:
    """The receiver process: accept every batch, count bytes; print the port, serve until killed."""
    counts = {"requests": 0, "bytes": 0, "readings": 0}

    async def ingest(request: web.Request) -> web.Response:
        body = await request.read()
        head = len(f"{request.method} {request.raw_path} HTTP/1.1\r\n") + 2
        head += sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        counts["requests"] += 1
        # aiohttp inflates a gzip'd body on read: the bytes that crossed the wire are Content-Length.
        counts["bytes"] += head + (request.content_length if request.content_length is not None else len(body))
        counts["readings"] += int(request.headers.get("X-Edgeagent-Count", "0"))
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts)

    async def main() -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/ingest", ingest)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def run_http(store: Store, total: int, batch: int) -> Result:
    proc = await asyncio.create_subprocess_exec(sys.executable, __file__, "--receiver", stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S))
        url = f"http://127.0.0.1:{port}/ingest"
        cfg = HttpUplinkConfig.model_validate({"kind": "http", "name": "http", "url": url, "batch_max_readings": batch})
        uplink = HttpUplink(cfg, GATEWAY)
        await uplink.start()
        try:
            seconds, rss = await drain("http", store, uplink, total, batch)
        finally:
            await uplink.close()
        async with ClientSession() as http, http.get(f"http://127.0.0.1:{port}/stats") as resp:
            counts = await resp.json()
        if counts["readings"] < total:
            raise RuntimeError(f"receiver counted {counts['readings']} readings, expected {total}")
        return Result("http", total, seconds, counts["bytes"], rss)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


# -- MQTT: a Mosquitto of our own -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Broker:
    """Mosquitto on a free loopback port, $SYS every second, no persistence."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
        if binary is None:
            raise SystemExit("mosquitto is not installed (apt-get install mosquitto); use --only http")
        self.binary = binary
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            "persistence false\nsys_interval 1\nallow_anonymous true\nmax_queued_messages 0\n"
            f"log_dest file {folder / 'mosquitto.log'}\nlistener {self.port} 127.0.0.1\n"
        )
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Broker:
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, "-c", str(self.conf), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > deadline or self.proc.returncode is not None:
                    raise
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            await self.proc.wait()


class SysBytes:
    """The broker's count of bytes received, as it publishes it in $SYS every second."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.updates: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="bench-sys") as client:
            await client.subscribe(SYS_BYTES_TOPIC)
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                self.updates.append((time.monotonic(), int(message.payload)))

    async def fresh(self, after: float) -> int:
        """The first value published after the monotonic time ``after``."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            newer = [value for stamp, value in self.updates if stamp > after]
            if newer:
                return newer[0]
            await asyncio.sleep(0.1)
        raise RuntimeError(f"no {SYS_BYTES_TOPIC} update from the broker")

    async def __aenter__(self) -> SysBytes:
        self._task = asyncio.create_task(self._watch(), name="sys-bytes")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def run_mqtt(store: Store, total: int, batch: int, folder: Path) -> Result:
    async with Broker(folder) as broker, SysBytes(broker.port) as sys_bytes:
        cfg = MqttUplinkConfig(
            kind="mqtt", name="mqtt", host="127.0.0.1", port=broker.port, tls=False, batch_max_readings=batch
        )
        uplink = MqttUplink(cfg, GATEWAY)
        await uplink.start()
        try:
            await asyncio.wait_for(uplink.link_up(), START_TIMEOUT_S)
            before = await sys_bytes.fresh(time.monotonic())
            seconds, rss = await drain("mqtt", store, uplink, total, batch)
            after = await sys_bytes.fresh(time.monotonic())
        finally:
            await uplink.close()
    return Result("mqtt", total, seconds, after - before, rss)


# -- main -------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, folder: Path, filled: Path) -> list[Result]:
    results = []
    for name in ("http", "mqtt"):
        if args.only not in (None, name):
            continue
        path = folder / f"drain-{name}.sqlite"
        shutil.copyfile(filled, path)
        async with Store(path, destinations=[name]) as store:
            if name == "http":
                result = await run_http(store, args.readings, args.batch)
            else:
                result = await run_mqtt(store, args.readings, args.batch, folder)
        print(result.line(), flush=True)
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--only", choices=("http", "mqtt"))
    parser.add_argument("--batch", type=int, default=5000, help="batch_max_readings (default 5000)")
    parser.add_argument("--dir", type=Path, help="folder for the store (default: a temp dir)")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        serve_receiver()
        return
    with tempfile.TemporaryDirectory(prefix="edgeagent-drain-", dir=args.dir) as tmp:
        folder = Path(tmp)
        filled = folder / "filled.sqlite"
        rate = fill(filled, args.readings)
        print(
            f"drain of {args.readings:,} buffered readings (10 devices x 5 points), "
            f"batches of {args.batch}; store filled at {rate:,.0f} readings/s"
        )
        head = f"{'uplink':<6} {'readings':>10} {'seconds':>8} {'readings/s':>12} {'bytes/reading':>15}"
        print(f"{head}   RSS MB start / max / end")
        results = asyncio.run(bench(args, folder, filled))
        print("targets: >= 50,000 readings/s, <= 20 bytes/reading, RSS max - start <= 10 MB")
        for r in results:
            missed = []
            if r.readings / r.seconds < 50_000:
                missed.append("readings/s")
            if r.wire_bytes / r.readings > 20:
                missed.append("bytes/reading")
            if max(r.rss) - r.rss[0] > 10:
                missed.append("RSS")
            print(f"  {r.name}: {'all met' if not missed else 'missed: ' + ', '.join(missed)}")


if __name__ == "__main__":
    main()
