"""Resident memory of ``edgeagent run`` per kind of site, and which heavy libraries it loaded.

    .venv-test/bin/python bench/site_rss.py [--sites serial-mqtt,modbus-http] [--samples 5] [--every-s 2]

A gateway with one visibility sensor should not pay for a Modbus stack, an HTTP client
or a BLE stack it never uses. For each kind of site this starts the real daemon as a
child process (``python -m edgeagent run --config F``, with ``NOTIFY_SOCKET`` as systemd
sets it) against simulated field devices and a real upstream on loopback, waits for
READY=1 and for the first answers its sensor gives after that, then reads VmRSS from
/proc/PID/status ``--samples`` times, ``--every-s`` apart, and stops it with SIGTERM.

A second run of the same site finds out what was imported, from outside the agent: a
wrapper (``python -c``, tests/moduledump.py) runs ``edgeagent`` as ``-m`` would and
writes ``sys.modules`` to a file at exit, so nothing in the agent knows it is measured.
Modules imported lazily while running (an uplink's, say) are included, because the
list is written at stop.

Sites (the simulators are those of ``edgeagent.sim``):
  serial-mqtt         a Vaisala PWD22 on a pty, an MQTT uplink to a real Mosquitto
                      (an uplink to a closed port when no ``mosquitto`` is installed)
  serial-mqtt-noweb   the same with the status page switched off ([web] enabled = false)
  modbus-http         a water-level sensor over Modbus TCP, an HTTP uplink to the ingest sim
  roadside            config/demo.toml: Modbus TCP and RTU, PWD, radar, BLE, HTTP uplink
                      (the BLE bus has no radio in a child process: it stays offline)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.agentproc import NotifySocket
from tests.helpers import free_port
from tests.moduledump import edgeagent_argv, read_modules

from edgeagent.profiles import read_toml
from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.pwd import PwdSimulator
from edgeagent.sim.site import RoadsideSite
from edgeagent.sim.water_level import WaterLevelSimulator

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 30.0
POLLING_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0

# What the table reports: top-level packages, plus the parts of aiohttp and our own
# modules whose presence says which code paths a site paid for.
HEAVY = {
    "pymodbus": "pymodbus",
    "serial": "serial",
    "aiohttp": "aiohttp",
    "aiohttp.client": "aiohttp.client",
    "aiohttp.web": "aiohttp.web",
    "aiomqtt": "aiomqtt",
    "bleak": "bleak",
    "cryptography": "cryptography",
    "uplinks.http": "edgeagent.uplinks.http",
    "uplinks.mqtt": "edgeagent.uplinks.mqtt",
}


@dataclass
class Site:
    """A running set of simulators, a config that points at them, and a sign of polling."""

    config: dict[str, Any]
    polled: Callable[[], int]  # grows with every answer the site's sensor gives
    upstream: str


@dataclass
class Measurement:
    rss_mb: list[float]
    hwm_mb: float
    ready_s: float
    modules: set[str] | None = None


def to_toml(data: dict[str, Any]) -> str:
    """Just enough TOML for a site config: tables, arrays of tables, scalars and lists."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str | Path):
            return json.dumps(str(v))
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"no TOML for {v!r}")

    def table(prefix: str, body: dict[str, Any], header: str) -> list[str]:
        lines = [header] if header else []
        nested = []
        for k, v in body.items():
            if isinstance(v, dict):
                nested.append((k, v))
            elif not (isinstance(v, list) and v and isinstance(v[0], dict)):
                lines.append(f"{k} = {value(v)}")
        for k, v in nested:
            lines += table(f"{prefix}{k}.", v, f"[{prefix}{k}]")
        return lines

    out: list[str] = []
    for key, v in data.items():
        if isinstance(v, dict):
            out += [*table(f"{key}.", v, f"[{key}]"), ""]
        elif isinstance(v, list):
            for item in v:
                out += [*table(f"{key}.", item, f"[[{key}]]"), ""]
        else:
            out.insert(0, f"{key} = {value(v)}")
    return "\n".join(out)


def _base(state_dir: Path, *, web: bool = True) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-bench", "state_dir": str(state_dir)},
        "store": {"commit_interval_ms": 500, "commit_max_readings": 1000},
        "web": {"enabled": web, "host": "127.0.0.1", "port": 0},
    }


PWD_DEVICE = {
    "id": "pwd-01",
    "profile": "vaisala_pwd22",
    "bus": "pwd-line",
    "sensor_id": "1",
    "poll_interval_s": 1.0,
    "asset": {"location": "bench", "owner": "bench"},
}


@contextlib.asynccontextmanager
async def serial_mqtt(state_dir: Path, *, web: bool = True) -> AsyncIterator[Site]:
    async with PwdSimulator(sensor_ids=["1"]) as pwd, _broker(state_dir.parent / "broker") as (port, upstream):
        config = _base(state_dir, web=web)
        # A pty takes only 8N1 (the real sensor line is 7E1, from its profile).
        config["buses"] = [
            {"name": "pwd-line", "kind": "serial", "port": pwd.port, "bytesize": 8, "parity": "N", "stopbits": 1}
        ]
        config["devices"] = [PWD_DEVICE]
        config["uplinks"] = [{"name": "broker", "kind": "mqtt", "host": "127.0.0.1", "port": port, "tls": False}]
        yield Site(config, lambda: pwd.answers, upstream)


@contextlib.asynccontextmanager
async def _broker(folder: Path) -> AsyncIterator[tuple[int, str]]:
    """A real Mosquitto on loopback; without one, a port nothing listens on."""
    if not shutil.which("mosquitto", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin"):
        yield free_port(), "closed port"
        return
    from tests.mosquitto import Mosquitto

    async with Mosquitto(folder) as broker:
        yield broker.port, "mosquitto"


@contextlib.asynccontextmanager
async def modbus_http(state_dir: Path) -> AsyncIterator[Site]:
    sensor = WaterLevelSimulator(unit_ids=[1])
    await sensor.start()
    try:
        async with IngestServer() as ingest:
            config = _base(state_dir)
            config["buses"] = [{"name": "flood", "kind": "modbus_tcp", "host": "127.0.0.1", "port": sensor.port}]
            config["devices"] = [
                {
                    "id": "wl-01",
                    "profile": "generic_water_level",
                    "bus": "flood",
                    "unit_id": 1,
                    "poll_interval_s": 1.0,
                    "asset": {"location": "bench", "owner": "bench"},
                }
            ]
            config["uplinks"] = [{"name": "platform", "kind": "http", "url": ingest.url}]
            yield Site(config, lambda: sensor.requests, "ingest sim")
    finally:
        await sensor.stop()


@contextlib.asynccontextmanager
async def roadside(state_dir: Path) -> AsyncIterator[Site]:
    async with RoadsideSite() as sims, IngestServer() as ingest:
        config = sims.fill(read_toml(REPO / "config" / "demo.toml"))
        config["gateway"]["state_dir"] = str(state_dir)
        config["web"]["port"] = 0
        for uplink in config["uplinks"]:
            uplink["url"] = ingest.url
        yield Site(config, lambda: sims.tcp_sensor.requests + sims.pwd.answers, "ingest sim")


SITES: dict[str, Callable[[Path], contextlib.AbstractAsyncContextManager[Site]]] = {
    "serial-mqtt": serial_mqtt,
    "serial-mqtt-noweb": lambda state: serial_mqtt(state, web=False),
    "modbus-http": modbus_http,
    "roadside": roadside,
}


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


async def measure(site: Site, folder: Path, *, dump_modules: bool, samples: int, every_s: float) -> Measurement:
    """Start the agent on the site, wait until it polls, sample its RSS, stop it."""
    config = folder / "site.toml"
    config.write_text(to_toml(site.config))
    modules_file = folder / "modules.txt"
    run = ["run", "--config", str(config), "--log-level", "WARNING"]
    argv = edgeagent_argv(modules_file, *run) if dump_modules else [sys.executable, "-m", "edgeagent", *run]
    notify = NotifySocket(folder / f"notify-{dump_modules:d}.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    env.pop("WATCHDOG_USEC", None)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        await _until(lambda: notify.has("READY=1"), proc, READY_TIMEOUT_S, "READY=1")
        ready_s = time.monotonic() - started
        answered = site.polled()
        await _until(lambda: site.polled() > answered, proc, POLLING_TIMEOUT_S, "the sensor's first answer")
        rss = []
        for i in range(samples):
            if i:
                await asyncio.sleep(every_s)
            rss.append(_status_kb(proc.pid, "VmRSS") / 1024)
        hwm = _status_kb(proc.pid, "VmHWM") / 1024
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        stderr = await asyncio.wait_for(proc.stderr.read(), STOP_TIMEOUT_S)
        code = await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        if code != 0:
            raise SystemExit(f"edgeagent exited with {code}:\n{stderr.decode()[-2000:]}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await notify.close()
    modules = read_modules(modules_file) if dump_modules else None
    return Measurement(rss, hwm, ready_s, modules)


async def _until(predicate: Callable[[], bool], proc: asyncio.subprocess.Process, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.returncode is not None or time.monotonic() > deadline:
            err = b""
            if proc.returncode is not None and proc.stderr is not None:
                err = await proc.stderr.read()
            raise SystemExit(f"no {what} within {timeout_s:.0f} s (exit {proc.returncode}): {err.decode()[-2000:]}")
        await asyncio.sleep(0.05)


async def run_site(name: str, *, samples: int, every_s: float) -> tuple[Measurement, Measurement, str]:
    """One plain run for the memory figure, one wrapped run for the module list."""
    results = []
    upstream = ""
    for dump in (False, True):
        with tempfile.TemporaryDirectory(prefix="edgeagent-rss-") as tmp:
            folder = Path(tmp)
            async with SITES[name](folder / "state") as site:
                upstream = site.upstream
                results.append(await measure(site, folder, dump_modules=dump, samples=samples, every_s=every_s))
    return results[0], results[1], upstream


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", default=",".join(SITES), help=f"comma-separated, of: {', '.join(SITES)}")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--every-s", type=float, default=2.0)
    args = parser.parse_args()
    names = [n.strip() for n in args.sites.split(",") if n.strip()]
    unknown = [n for n in names if n not in SITES]
    if unknown:
        parser.error(f"--sites: unknown {', '.join(unknown)} (known: {', '.join(SITES)})")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the simulators' own traces

    rows = []
    for name in names:
        plain, wrapped, upstream = await run_site(name, samples=args.samples, every_s=args.every_s)
        assert wrapped.modules is not None
        rows.append((name, plain, wrapped, upstream))
        print(f"{name}: READY=1 after {plain.ready_s:.2f} s; VmRSS samples {[round(r, 1) for r in plain.rss_mb]} MB")

    print()
    print(f"python {sys.version.split()[0]}; VmRSS of the plain run, {args.samples} samples {args.every_s:g} s apart")
    print("once READY=1 and the sensor answered; modules from the wrapped run's sys.modules at stop.")
    print()
    cols = list(HEAVY)
    header = ["site", "upstream", "RSS MB (median)", "RSS MB (max)", "HWM MB", "modules", *cols]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name, plain, wrapped, upstream in rows:
        assert wrapped.modules is not None
        marks = ["yes" if HEAVY[c] in wrapped.modules else "-" for c in cols]
        print(
            f"| {name} | {upstream} | {statistics.median(plain.rss_mb):.1f} | {max(plain.rss_mb):.1f}"
            f" | {plain.hwm_mb:.1f} | {len(wrapped.modules)} | " + " | ".join(marks) + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
