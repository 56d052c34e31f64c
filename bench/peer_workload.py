"""A peer gateway's workload: 10 Modbus TCP devices x 50 holding registers every 100 ms.

That is 5,000 points/s polled, stored and sent upstream, over HTTP or MQTT (a real
Mosquitto). The agent runs as a real process (``edgeagent run``) with its store, sync
and status page; the devices (pymodbus TCP servers), the broker and the receiver run in
other processes, so the figures are the agent's alone. The receiver keeps each
(buffer id, seq) once, counts the duplicates, and notes every record's lag.

The five measures, over the measuring window (after a warm-up):
- disk: bytes the agent wrote towards the block device (/proc/PID/io write_bytes) per
  point delivered; the state folder must be on a real disk (``--dir``), not a tmpfs;
- CPU: % of one core (utime + stime from /proc/PID/stat);
- RSS: VmRSS at start, its maximum and at end (flat means end - start stays small);
- lag: receive time minus reading time (the SenML time), p50 and p99, every record;
- delivered: distinct points/s, with gaps (numbers below the highest one received by
  the end of the window that have not arrived ``CATCH_UP_S`` later: numbers are
  gapless, so each is a loss) and duplicates (records that arrived twice).

Targets: at most 16 bytes/point, 5 % CPU, 50 MB RSS flat, lag 20 / 50 ms, all
5,000/s delivered with no gap and no duplicate. With ``--runs N`` the uplinks alternate
and the medians are printed. This machine's CPU figures are noisy when other work runs.
Run: python bench/peer_workload.py [--uplink http|mqtt|both] [--seconds 120] [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from pathlib import Path
from typing import Any

DEVICES = 10
REGISTERS = 50
POLL_S = 0.1
CATCH_UP_S = 30.0
MEASURES = ("bytes/point", "cpu_%", "rss_start_mb", "rss_max_mb", "rss_end_mb", "lag_p50_ms", "lag_p99_ms", "points/s")


# The devices, the broker and the receiver (the --serve process) ------------------------


class Receiver:
    """Keeps each (bid, seq) once and every record's lag; what a careful receiver does."""

    def __init__(self) -> None:
        self.seen: dict[str, bytearray] = {}  # bid -> one bit per seq
        self.readings = 0
        self.duplicates = 0
        self.max_seq = 0
        self.lags_ms = array("f")

    def take(self, records: list[dict[str, Any]], now: float) -> None:
        for rec in records:
            bits = self.seen.setdefault(rec["bid"], bytearray(1 << 20))
            seq = rec["seq"]
            while seq >= len(bits) * 8:
                bits.extend(bytes(len(bits)))
            byte, bit = divmod(seq, 8)
            if bits[byte] >> bit & 1:
                self.duplicates += 1
                continue
            bits[byte] |= 1 << bit
            self.readings += 1
            self.max_seq = max(self.max_seq, seq)
            if rec["t"] is not None:
                self.lags_ms.append((now - rec["t"]) * 1000)

    def missing(self, upto: int) -> int:
        """Numbers 1..upto of the one buffer not (yet) received."""
        if len(self.seen) != 1:
            return upto if not self.seen else -1  # more than one buffer: not this bench's case
        bits = next(iter(self.seen.values()))
        return sum(1 for s in range(1, upto + 1) if s >= len(bits) * 8 or not bits[s >> 3] >> (s & 7) & 1)

    def stats(self) -> dict[str, Any]:
        lags = sorted(self.lags_ms)

        def pick(q: float) -> float | None:
            return round(lags[min(len(lags) - 1, int(q * len(lags)))], 1) if lags else None

        lag = {"lag_p50_ms": pick(0.5), "lag_p99_ms": pick(0.99)}
        return {"readings": self.readings, "duplicates": self.duplicates, "max_seq": self.max_seq, **lag}


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    import pwd
    import shutil

    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        raise SystemExit("mosquitto is not installed (apt-get install mosquitto); use --uplink http")
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"user {pwd.getpwuid(os.getuid()).pw_name}\npersistence false\nallow_anonymous true\n"
        f"max_queued_messages 0\nlog_dest none\nlistener {port} 127.0.0.1\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("mosquitto did not start")
        time.sleep(0.02)


async def mqtt_receive(port: int, receiver: Receiver, subscribed: asyncio.Event) -> None:
    import aiomqtt

    from edgeagent.sync.senml import decode

    async with aiomqtt.Client("127.0.0.1", port, identifier="peer-bench-receiver") as client:
        await client.subscribe("edgeagent/+/readings/#", qos=1)
        subscribed.set()
        async for message in client.messages:
            now = time.time()
            assert isinstance(message.payload, bytes)
            receiver.take(decode(gzip.decompress(message.payload)), now)


async def serve(devices: int, mqtt: bool) -> None:
    import logging

    from aiohttp import web
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    from edgeagent.sync.senml import decode

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    ticks = [0]

    async def action(function_code, start_address, address, count, registers, set_values):  # type: ignore[no-untyped-def]
        # Every read sees new values, so nothing upstream can be a cached repeat.
        ticks[0] += 1
        base = ticks[0] & 0x3FFF
        for i in range(len(registers)):
            registers[i] = (base + i) & 0xFFFF
        return None

    servers = []
    for _ in range(devices):
        sim = SimDevice(
            id=1,
            simdata=[SimData(address=0, count=REGISTERS, values=0, datatype=DataType.REGISTERS)],
            action=action,
        )
        server = ModbusTcpServer([sim], address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        servers.append(server)
    ports = [s.transport.sockets[0].getsockname()[1] for s in servers]  # type: ignore[union-attr]
    receiver = Receiver()

    async def ingest(request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp inflates the gzip'd body
        now = time.time()
        receiver.take(decode(body), now)
        return web.json_response({"accepted": True})

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(receiver.stats())

    async def mark(request: web.Request) -> web.Response:
        receiver.lags_ms = array("f")  # lags from now on only
        return web.json_response(receiver.stats())

    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"missing": receiver.missing(int(request.query["upto"]))})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/ingest", ingest)
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/mark", mark)
    app.router.add_get("/missing", missing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    info: dict[str, Any] = {"modbus_ports": ports, "ingest_port": runner.addresses[0][1]}
    broker = None
    tasks = []
    with tempfile.TemporaryDirectory(prefix="peer-broker-") as tmp:
        if mqtt:
            broker, info["mqtt_port"] = start_broker(Path(tmp))
            subscribed = asyncio.Event()
            tasks.append(asyncio.create_task(mqtt_receive(info["mqtt_port"], receiver, subscribed)))
            await asyncio.wait_for(subscribed.wait(), 10)
        print(json.dumps(info), flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()  # SIGTERM from the measuring side: the broker goes with us
        finally:
            for task in tasks:
                task.cancel()
            if broker is not None:
                broker.terminate()
                broker.wait(timeout=10)


# The measuring side --------------------------------------------------------------------


PROFILE = """
manufacturer = "Bench"
model = "50-register Modbus TCP device"
protocol = "modbus"
default_poll_interval_s = 0.1
max_gap_registers = 0
[asset]
category = "benchmark load"
""" + "".join(
    f'[[points]]\nname = "r{i:02d}"\naddress = {i}\ntype = "uint16"\nscale = 0.1\nunit = "mm"\n'
    for i in range(REGISTERS)
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_config(folder: Path, info: dict[str, Any], uplink: str) -> str:
    buses = "".join(
        f'[[buses]]\nname = "tcp{i}"\nkind = "modbus_tcp"\nhost = "127.0.0.1"\nport = {port}\ntimeout_ms = 500\n'
        for i, port in enumerate(info["modbus_ports"])
    )
    devices = "".join(
        f'[[devices]]\nid = "dev{i:02d}"\nprofile = "bench_io_50"\nbus = "tcp{i}"\nunit_id = 1\n'
        f'poll_interval_s = {POLL_S}\n[devices.asset]\nlocation = "bench"\nowner = "bench"\n'
        for i in range(len(info["modbus_ports"]))
    )
    if uplink == "http":
        up = f'kind = "http"\nurl = "http://127.0.0.1:{info["ingest_port"]}/ingest"\n'
    else:
        up = f'kind = "mqtt"\nhost = "127.0.0.1"\nport = {info["mqtt_port"]}\ntls = false\n'
    return f"""
[gateway]
id = "gw-peer-bench"
state_dir = "{folder / "state"}"

[store]
commit_interval_ms = 1000
commit_max_readings = 5000

[web]
port = 0

{buses}
{devices}
[[uplinks]]
name = "platform"
{up}batch_max_readings = 5000
"""


def proc_field(pid: int, name: str, file: str) -> int:
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(name):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} in /proc/{pid}/{file}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        data: dict[str, Any] = json.load(resp)
        return data


def measure(args: argparse.Namespace, uplink: str) -> dict[str, float]:
    mqtt = ["--mqtt"] if uplink == "mqtt" else []
    servers = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(DEVICES), *mqtt], stdout=subprocess.PIPE, text=True
    )
    assert servers.stdout is not None
    info = json.loads(servers.stdout.readline())
    rx = info["ingest_port"]
    with tempfile.TemporaryDirectory(prefix="peer-bench-", dir=args.dir) as tmp:
        folder = Path(tmp)
        drivers = folder / "drivers"
        drivers.mkdir()
        (drivers / "bench_io_50.toml").write_text(PROFILE)
        config = folder / "site.toml"
        config.write_text(site_config(folder, info, uplink))
        env = {**os.environ, "EDGEAGENT_DRIVERS_PATH": str(drivers)}
        argv = [sys.executable, "-m", "edgeagent", "run", "--config", str(config), "--log-level", "WARNING"]
        agent = subprocess.Popen(argv, env=env)
        try:
            time.sleep(args.warmup_s)
            if agent.poll() is not None:
                raise SystemExit("the agent exited during warm-up")
            offered = DEVICES * REGISTERS / POLL_S
            print(f"{uplink}: {DEVICES} Modbus TCP devices x {REGISTERS} registers every {POLL_S * 1000:.0f} ms")
            print(f"= {offered:.0f} points/s offered; measuring {args.seconds:g} s")
            print("    t_s  delivered/s  cpu_%_of_one_core  rss_mb  disk_bytes/point")
            pid = agent.pid
            t0 = last_t = time.monotonic()
            cpu0 = last_cpu = cpu_seconds(pid)
            io0 = last_io = proc_field(pid, "write_bytes:", "io")
            got0 = last_got = int(get(rx, "/mark")["readings"])
            rss: list[float] = [proc_field(pid, "VmRSS:", "status") / 1024]
            while (now := time.monotonic()) - t0 < args.seconds:
                time.sleep(min(args.sample_s, args.seconds - (now - t0)))
                now, cpu, io = time.monotonic(), cpu_seconds(pid), proc_field(pid, "write_bytes:", "io")
                stats = get(rx, "/stats")
                got = int(stats["readings"])
                rss.append(proc_field(pid, "VmRSS:", "status") / 1024)
                per = (io - last_io) / max(1, got - last_got)
                print(
                    f"  {now - t0:5.0f}  {(got - last_got) / (now - last_t):11.0f}  "
                    f"{100 * (cpu - last_cpu) / (now - last_t):17.1f}  {rss[-1]:6.1f}  {per:16.1f}"
                )
                last_t, last_cpu, last_got, last_io = now, cpu, got, io
            span = last_t - t0
            upto = int(stats["max_seq"])  # numbers are gapless: everything below must arrive
            deadline = time.monotonic() + CATCH_UP_S
            while (gaps := int(get(rx, f"/missing?upto={upto}")["missing"])) and time.monotonic() < deadline:
                time.sleep(0.2)
            final = get(rx, "/stats")
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=15)
            except subprocess.TimeoutExpired:
                agent.kill()
            servers.terminate()
            servers.wait(timeout=10)
    result = {
        "bytes/point": (last_io - io0) / max(1, last_got - got0),
        "cpu_%": 100 * (last_cpu - cpu0) / span,
        "rss_start_mb": rss[0],
        "rss_max_mb": max(rss),
        "rss_end_mb": rss[-1],
        "lag_p50_ms": stats["lag_p50_ms"],
        "lag_p99_ms": stats["lag_p99_ms"],
        "points/s": (last_got - got0) / span,
    }
    print(
        f"summary ({uplink}): {result['points/s']:.0f} points/s delivered of {offered:.0f} offered, "
        f"{gaps} gaps in 1..{upto}, {final['duplicates']} duplicates; "
        f"disk {result['bytes/point']:.1f} bytes/point; CPU {result['cpu_%']:.1f} % of one core; "
        f"RSS {rss[0]:.1f} MB at start, {max(rss):.1f} max, {rss[-1]:.1f} at end; "
        f"lag p50 {stats['lag_p50_ms']} ms, p99 {stats['lag_p99_ms']} ms",
        flush=True,
    )
    result["gaps"], result["duplicates"] = gaps, final["duplicates"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uplink", choices=("http", "mqtt", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=120.0, help="measuring time after the warm-up")
    parser.add_argument("--sample-s", type=float, default=10.0, help="print a sample this often")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=1, help="runs per uplink (alternating); medians printed")
    parser.add_argument("--dir", type=Path, help="folder for the state (on the disk to measure; default: a temp dir)")
    parser.add_argument("--json", type=Path, help="append each run's figures to this file (one JSON per line)")
    parser.add_argument("--serve", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--mqtt", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.serve, args.mqtt))
        return
    uplinks = ["http", "mqtt"] if args.uplink == "both" else [args.uplink]
    results: dict[str, list[dict[str, float]]] = {u: [] for u in uplinks}
    for _ in range(args.runs):
        for uplink in uplinks:
            result = measure(args, uplink)
            results[uplink].append(result)
            if args.json is not None:
                with args.json.open("a") as f:
                    f.write(json.dumps({"uplink": uplink, **result}) + "\n")
    if args.runs > 1:
        print(f"medians of {args.runs} runs:")
        print(f"{'uplink':<6} " + " ".join(f"{m:>12}" for m in MEASURES))
        for uplink, runs in results.items():
            med = [statistics.median(r[m] for r in runs) for m in MEASURES]
            print(f"{uplink:<6} " + " ".join(f"{v:>12.1f}" for v in med))


if __name__ == "__main__":
    main()
