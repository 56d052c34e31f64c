"""A peer gateway's workload: 10 Modbus TCP devices x 50 holding registers every 100 ms.

That is 5,000 points/s polled, stored and sent upstream. The agent runs as a real
process (``edgeagent run``) with its store, sync and status page; the devices (pymodbus
TCP servers) and the upstream receiver (it counts readings and distinct sequence
numbers, and keeps nothing else) run in a second process, so the figures are the
agent's alone. Every ``--sample-s`` seconds: points/s delivered upstream, the agent's
CPU (% of one core, from /proc/PID/stat) and RSS.

Targets: all 5,000/s delivered, at most 5 % CPU, at most 50 MB RSS, flat.
Run: python bench/peer_workload.py [--seconds 120] [--sample-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DEVICES = 10
REGISTERS = 50
POLL_S = 0.1


# The devices and the receiver (the --serve process) ------------------------------------


async def serve(devices: int) -> None:
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

    received = bytearray(1 << 20)  # one bit per sequence number seen
    stats = {"readings": 0, "duplicates": 0, "batches": 0}

    async def ingest(request: web.Request) -> web.Response:
        records = decode(await request.read())
        for rec in records:
            seq = rec["seq"]
            if seq >= len(received) * 8:
                received.extend(bytes(len(received)))
            byte, bit = divmod(seq, 8)
            if received[byte] >> bit & 1:
                stats["duplicates"] += 1
            else:
                received[byte] |= 1 << bit
                stats["readings"] += 1
        stats["batches"] += 1
        return web.json_response({"accepted": len(records)})

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/ingest", ingest)
    app.router.add_get("/stats", get_stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    ingest_port = runner.addresses[0][1]
    print(json.dumps({"modbus_ports": ports, "ingest_port": ingest_port}), flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()


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


def site_config(folder: Path, ports: list[int], ingest_port: int) -> str:
    buses = "".join(
        f'[[buses]]\nname = "tcp{i}"\nkind = "modbus_tcp"\nhost = "127.0.0.1"\nport = {port}\ntimeout_ms = 500\n'
        for i, port in enumerate(ports)
    )
    devices = "".join(
        f'[[devices]]\nid = "dev{i:02d}"\nprofile = "bench_io_50"\nbus = "tcp{i}"\nunit_id = 1\n'
        f'poll_interval_s = {POLL_S}\n[devices.asset]\nlocation = "bench"\nowner = "bench"\n'
        for i in range(len(ports))
    )
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
kind = "http"
url = "http://127.0.0.1:{ingest_port}/ingest"
batch_max_readings = 5000
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def delivered(ingest_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{ingest_port}/stats", timeout=5) as resp:
        return int(json.load(resp)["readings"])


def measure(args: argparse.Namespace) -> None:
    servers = subprocess.Popen([sys.executable, __file__, "--serve", str(DEVICES)], stdout=subprocess.PIPE, text=True)
    assert servers.stdout is not None
    info = json.loads(servers.stdout.readline())
    with tempfile.TemporaryDirectory(prefix="peer-bench-") as tmp:
        folder = Path(tmp)
        drivers = folder / "drivers"
        drivers.mkdir()
        (drivers / "bench_io_50.toml").write_text(PROFILE)
        config = folder / "site.toml"
        config.write_text(site_config(folder, info["modbus_ports"], info["ingest_port"]))
        env = {**os.environ, "EDGEAGENT_DRIVERS_PATH": str(drivers)}
        agent = subprocess.Popen(
            [sys.executable, "-m", "edgeagent", "run", "--config", str(config), "--log-level", "WARNING"], env=env
        )
        try:
            time.sleep(args.warmup_s)
            if agent.poll() is not None:
                raise SystemExit("the agent exited during warm-up")
            print(
                f"{DEVICES} Modbus TCP devices x {REGISTERS} registers every {POLL_S * 1000:.0f} ms "
                f"= {DEVICES * REGISTERS / POLL_S:.0f} points/s offered; measuring {args.seconds:g} s"
            )
            print("    t_s  delivered/s  cpu_%_of_one_core  rss_mb")
            t0 = last_t = time.monotonic()
            cpu0 = last_cpu = cpu_seconds(agent.pid)
            got0 = last_got = delivered(info["ingest_port"])
            rss: list[float] = [rss_mb(agent.pid)]
            while (now := time.monotonic()) - t0 < args.seconds:
                time.sleep(min(args.sample_s, args.seconds - (now - t0)))
                now, cpu, got = time.monotonic(), cpu_seconds(agent.pid), delivered(info["ingest_port"])
                rss.append(rss_mb(agent.pid))
                print(
                    f"  {now - t0:5.0f}  {(got - last_got) / (now - last_t):11.0f}  "
                    f"{100 * (cpu - last_cpu) / (now - last_t):17.1f}  {rss[-1]:6.1f}"
                )
                last_t, last_cpu, last_got = now, cpu, got
            span = last_t - t0
            print(
                f"summary: {(last_got - got0) / span:.0f} points/s delivered of {DEVICES * REGISTERS / POLL_S:.0f} "
                f"offered; agent CPU {100 * (last_cpu - cpu0) / span:.1f} % of one core; "
                f"RSS {rss[0]:.1f} MB at start, {max(rss):.1f} MB max, {rss[-1]:.1f} MB at end "
                f"({rss[-1] - rss[0]:+.1f} MB over {span:.0f} s)"
            )
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=15)
            except subprocess.TimeoutExpired:
                agent.kill()
            servers.terminate()
            servers.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="measuring time after the warm-up")
    parser.add_argument("--sample-s", type=float, default=10.0, help="print a sample this often")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--serve", type=int, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.serve))
        return
    measure(args)


if __name__ == "__main__":
    main()
