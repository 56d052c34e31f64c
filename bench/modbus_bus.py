"""RS-485 bus throughput against the timing-faithful RTU simulator, and what read merging saves.

1. Transactions/s: several units on one simulated 9600 baud 8N1 line (the simulator runs
   in its own process, holding each answer until it would have crossed a real wire),
   each polled for 10 registers as fast as the agent's scheduler can go, through the
   production path (BusPoller, pymodbus RTU client, decoding). The physical limit of
   such a transaction (8-byte request, 25-byte answer, two 3.5-character gaps) is 24.0/s.
2. Requests per poll cycle for a 40-point profile with gaps: one request per point, as a
   naive poller does, against the merged plan (gap budget 8 registers, a forbidden range
   never bridged), and the line time each takes at 9600 baud, measured on the simulator.

Run: python bench/modbus_bus.py [--seconds 10] [--units 8] [--baud 9600]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import subprocess
import sys
import time
from typing import Any

from edgeagent.config import DeviceConfig
from edgeagent.devices.modbus import ModbusDevice
from edgeagent.devices.scheduler import BusPoller
from edgeagent.live import BusLive, DeviceLive
from edgeagent.profiles import ModbusProfile
from edgeagent.protocols import modbus_rtu as rtu
from edgeagent.protocols.modbus import plan_reads
from edgeagent.transports.modbus import ModbusRtuTransport

ASSET = {"location": "bench", "owner": "bench"}


def _profile(
    points: list[dict[str, Any]], *, max_gap: int = 8, forbidden: list[dict[str, Any]] | None = None
) -> ModbusProfile:
    return ModbusProfile.model_validate(
        {
            "manufacturer": "Bench",
            "model": "bench",
            "protocol": "modbus",
            "asset": {"category": "bench"},
            "max_gap_registers": max_gap,
            "forbidden": forbidden or [],
            "points": points,
        }
    )


def _device(uid: int, profile: ModbusProfile, poll_interval_s: float) -> ModbusDevice:
    cfg = DeviceConfig.model_validate(
        {
            "id": f"u{uid}",
            "profile": "bench",
            "bus": "line",
            "unit_id": uid,
            "poll_interval_s": poll_interval_s,
            "asset": ASSET,
        }
    )
    return ModbusDevice(cfg, profile, bus_timeout_s=0.5)


def forty_point_profile(max_gap: int) -> ModbusProfile:
    """40 points in the shape of a real map: runs of values, small holes, 32-bit pairs, one reserved block."""
    points: list[dict[str, Any]] = []
    address = 0
    kinds = ["uint16", "int16", "float32", "uint16", "uint32", "int16", "uint16", "float32"]
    for i in range(40):
        kind = kinds[i % len(kinds)]
        points.append({"name": f"p{i:02d}", "address": address, "type": kind, "unit": "x", "function": "holding"})
        address += 2 if kind in ("float32", "uint32") else 1
        address += (0, 1, 0, 3, 0, 0, 2, 6)[i % 8]  # the holes between values
        if i == 19:
            address = 120  # a second block after a reserved range
    return _profile(points, max_gap=max_gap, forbidden=[{"function": "holding", "first": 90, "last": 99}])


def start_simulator(units: int, baud: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeagent.sim.modbus_rtu", "--units", f"1-{units}", "--baud", str(baud)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = proc.stdout.readline().strip()
    if not port:
        proc.kill()
        raise SystemExit("the simulator did not start")
    return proc, port


async def throughput(port: str, units: int, baud: int, seconds: float) -> tuple[float, float]:
    """Transactions/s of 10-register reads through the scheduler, and through a bare transport loop."""
    profile = _profile([{"name": f"r{a}", "address": a, "type": "uint16", "unit": "x"} for a in range(10)])
    devices = [_device(uid, profile, 0.001) for uid in range(1, units + 1)]
    live = {d.id: DeviceLive(id=d.id, profile="bench", bus="line", asset={}) for d in devices}
    bus = BusLive(name="line", kind="modbus_rtu", target=port)
    transport = ModbusRtuTransport(port, baudrate=baud, timeout_s=0.5)
    poller = BusPoller("line", transport, devices, live, lambda readings: None, bus_live=bus)
    task = asyncio.create_task(poller.run(), name="bench-poller")
    await asyncio.sleep(1.0)  # warm up: port open, first round done
    start_tx, started = bus.transactions, time.perf_counter()
    await asyncio.sleep(seconds)
    scheduled = (bus.transactions - start_tx) / (time.perf_counter() - started)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    failed = sum(d.polls_failed for d in live.values())
    if failed:
        print(f"  warning: {failed} failed polls during the run")
    await asyncio.sleep(0.2)  # the answer to the request cut off by the cancel crosses the line

    transport = ModbusRtuTransport(port, baudrate=baud, timeout_s=0.5)
    n, started = 0, time.perf_counter()
    try:
        while time.perf_counter() - started < min(seconds, 5.0):
            await transport.read("holding", 0, 10, 1 + n % units)
            n += 1
    finally:
        await transport.close()
    bare = n / (time.perf_counter() - started)
    return scheduled, bare


async def merged_vs_naive(port: str, baud: int, cycles: int) -> None:
    naive = forty_point_profile(max_gap=0)
    naive_spans = [
        s
        for p in naive.points
        for s in plan_reads([(p.function, p.address, p.registers)], max_gap=0)  # one request per point
    ]
    merged = _device(1, forty_point_profile(max_gap=8), 1.0)
    char_s = rtu.char_time_s(baud)
    line_s = {
        name: sum(
            rtu.transaction_time_s(8, rtu.read_response_bytes(rtu.READ_HOLDING_REGISTERS, s.count), baud) for s in spans
        )
        for name, spans in (("naive", naive_spans), ("merged", merged.spans))
    }
    transport = ModbusRtuTransport(port, baudrate=baud, timeout_s=0.5)
    measured: dict[str, float] = {}
    try:
        for name, spans in (("naive", naive_spans), ("merged", merged.spans)):
            started = time.perf_counter()
            for _ in range(cycles):
                for s in spans:
                    await transport.read(s.function, s.start, s.count, 1)
            measured[name] = (time.perf_counter() - started) / cycles
    finally:
        await transport.close()
    registers = sum(s.count for s in merged.spans)
    print(
        f"40-point profile with gaps (a reserved block 90-99 never read), at {baud} baud, {char_s * 1000:.2f} ms/char:"
    )
    print(
        f"  one request per point : {len(naive_spans):3d} requests/cycle, line time {line_s['naive'] * 1000:7.1f} ms, "
        f"measured {measured['naive'] * 1000:7.1f} ms/cycle"
    )
    print(
        f"  merged (gap budget 8) : {len(merged.spans):3d} requests/cycle, "
        f"line time {line_s['merged'] * 1000:7.1f} ms, "
        f"measured {measured['merged'] * 1000:7.1f} ms/cycle ({registers} registers read)"
    )
    print(f"  merged spans: {', '.join(f'{s.start}+{s.count}' for s in merged.spans)}")
    print(
        f"  saving: {len(naive_spans) / len(merged.spans):.1f}x fewer requests, "
        f"{measured['naive'] / measured['merged']:.1f}x less bus time per cycle"
    )


async def main_async(args: argparse.Namespace) -> None:
    proc, port = start_simulator(args.units, args.baud)
    try:
        limit = 1 / rtu.transaction_time_s(8, rtu.read_response_bytes(rtu.READ_HOLDING_REGISTERS, 10), args.baud)
        scheduled, bare = await throughput(port, args.units, args.baud, args.seconds)
        print(f"RTU line at {args.baud} baud 8N1, {args.units} units, 10-register reads, {args.seconds:g} s:")
        print(f"  physical limit             : {limit:6.2f} transactions/s")
        print(f"  agent scheduler (BusPoller): {scheduled:6.2f} transactions/s = {scheduled / limit:.3f} of the limit")
        print(f"  bare transport loop        : {bare:6.2f} transactions/s = {bare / limit:.3f} of the limit")
        await merged_vs_naive(port, args.baud, args.cycles)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def main() -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # as the agent does: errors are ours to report
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time for the throughput")
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--cycles", type=int, default=3, help="poll cycles timed per variant")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
