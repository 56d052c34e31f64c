"""``edgeagent demo``: the real agent against simulated field devices and a local ingest.

Only the field devices and the upstream receiver are stand-ins (see ``sim/site.py``:
Modbus TCP and RTU servers, ptys for the serial sensors, a simulated BLE radio behind
bleak's backend seam). The config comes from the shipped ``demo.toml`` (with the
simulators' ports filled in) and goes through the same validation, store, pollers, sync
and status page as a production gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeagent.agent import Agent, install_signal_handlers
from edgeagent.config import SiteConfig, parse_config
from edgeagent.profiles import read_toml
from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.site import RoadsideSite

log = logging.getLogger(__name__)

DEMO_REPORT_EVERY_S = 10.0
DEMO_USER = "demo"


def example_config_dir() -> Path:
    """Shipped example configs: inside the wheel, else the source checkout's ``config/``."""
    packaged = Path(__file__).resolve().parents[1] / "example_config"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "config"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def demo_config(*, site: RoadsideSite, ingest_url: str, state_dir: Path, web_port: int) -> SiteConfig:
    """The shipped demo config with this run's simulators, ingest, state folder and web port."""
    path = example_config_dir() / "demo.toml"
    data: dict[str, Any] = site.fill(read_toml(path))
    data["gateway"]["state_dir"] = str(state_dir)
    data["web"]["port"] = web_port
    for uplink in data["uplinks"]:
        uplink["url"] = ingest_url
    return parse_config(data, file=str(path), base=path.parent)


def demo_user(config: SiteConfig) -> str:
    """A fresh random password for the demo's technician (there is no default password); returned to print."""
    from edgeagent.web.auth import new_secret, set_password, users_path

    password = new_secret()[:16]
    config.gateway.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    set_password(users_path(config.web.users_file, config.gateway.state_dir), DEMO_USER, password, "technician")
    return password


def _line(agent: Agent, device: str, point: str, fmt: str = "{:.1f}") -> str:
    pv = agent.live.devices[device].points.get(point)
    if pv is None or pv.value is None:
        return "–"
    return f"{fmt.format(pv.value)} {pv.unit}"


async def run_demo(*, web_port: int = 8080, state_dir: Path | None = None, duration_s: float | None = None) -> int:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    with contextlib.ExitStack() as cleanup:
        if state_dir is None:
            state_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="edgeagent-demo-")))
        async with RoadsideSite() as site, IngestServer() as ingest:
            if web_port and not _port_free("127.0.0.1", web_port):
                log.warning("port %d is busy; the status page takes a free port instead", web_port)
                web_port = 0
            config = demo_config(site=site, ingest_url=ingest.url, state_dir=state_dir, web_port=web_port)
            password = demo_user(config)
            agent = Agent(config, ble_backend=site.ble_backend)
            run = asyncio.create_task(agent.run(stop), name="agent")
            ready = asyncio.create_task(agent.ready.wait())
            await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
            if run.done():
                ready.cancel()
                await run
                return 1
            print(f"edgeagent demo is running. Status page: {agent.web_url}", flush=True)
            print(f"  log in as {DEMO_USER} with password {password} (made for this run)", flush=True)
            print(
                f"  JSON: {agent.web_url}api/status   ingest stats: http://127.0.0.1:{ingest.port}/stats",
                flush=True,
            )
            print(
                f"  simulated field bus: Modbus TCP 127.0.0.1:{site.tcp_sensor.port} (wl-01); "
                f"RS-485 line {site.rtu.port} at 9600 baud ({len(site.rtu.units)} devices, sign-01 among them); "
                f"PWD22 {site.pwd.port}; radar {site.radar.port}; BLE radio (2 manhole sensors, 1 RuuviTag)",
                flush=True,
            )
            print(f"  state: {state_dir}   stop with Ctrl-C", flush=True)
            deadline = None if duration_s is None else time.monotonic() + duration_s
            while not run.done() and not stop.is_set():
                timeout = DEMO_REPORT_EVERY_S
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - time.monotonic()))
                await asyncio.wait({run}, timeout=timeout)
                if deadline is not None and time.monotonic() >= deadline:
                    stop.set()
                online = sum(1 for d in agent.live.devices.values() if d.state.value == "online")
                level = _line(agent, "wl-01", "water_level")
                visibility = _line(agent, "pwd-01", "visibility_1min", "{:.0f}")
                lamp = _line(agent, "lamp-01", "dim_level", "{:.0f}")
                sign = "CLOSED" if site.sign.closure else "open"
                active = len(agent.live.alarms.active())
                print(
                    f"  {online}/{len(agent.live.devices)} devices online; water level {level}, "
                    f"visibility {visibility}, lamp {lamp}; underpass sign {sign}, {active} alarms active; "
                    f"ingest has received {ingest.stats.readings_received} readings",
                    flush=True,
                )
            started = time.monotonic()
            await run
            log.info("agent stopped in %.2f s", time.monotonic() - started)
    return 0
