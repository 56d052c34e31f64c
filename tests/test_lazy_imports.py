"""A site loads only the code its config uses (issue 9).

A gateway with one serial visibility sensor and an MQTT uplink must not carry a Modbus
stack or the HTTP uplink in memory. The real ``edgeagent run`` is started as a child
process on such a site (a simulated PWD22 on a pty), polls until the sensor answers,
is stopped with SIGTERM, and lists its ``sys.modules`` at exit (tests/moduledump.py).
The converse site (Modbus TCP sensor, HTTP uplink) must load exactly what the first
may not, so neither check can pass because nothing was loaded at all.

The status page is aiohttp's server, and ``import aiohttp`` (the package, which
``aiohttp.web`` needs) imports ``aiohttp.client`` itself: a site with the status page
on always has the client module in memory, and is spared only our HTTP uplink module
(and the sessions and connectors it would make). A site with neither the status page
nor an HTTP uplink loads no aiohttp at all.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.pwd import PwdSimulator
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.agentproc import NotifySocket
from tests.helpers import free_port, wait_until
from tests.moduledump import edgeagent_argv, loaded, read_modules

READY_TIMEOUT_S = 30.0


def _site_toml(state_dir: Path, bus: str, device: str, uplink: str, *, web: bool = True) -> str:
    return f"""
[gateway]
id = "gw-lazy"
state_dir = "{state_dir}"

[store]
commit_interval_ms = 100

[web]
enabled = {str(web).lower()}
port = 0

[[buses]]
{bus}

[[devices]]
{device}
poll_interval_s = 0.2
[devices.asset]
location = "test bench"
owner = "tests"

[[uplinks]]
{uplink}
"""


async def _run_and_list_modules(tmp_path: Path, config_text: str, answered: Callable[[], bool]) -> set[str]:
    """Run ``edgeagent run`` until READY=1 and ``answered()``, SIGTERM it, return its modules."""
    config = tmp_path / "site.toml"
    config.write_text(config_text)
    modules_file = tmp_path / "modules.txt"
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    env.pop("WATCHDOG_USEC", None)
    proc = await asyncio.create_subprocess_exec(
        *edgeagent_argv(modules_file, "run", "--config", str(config)),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until(
            lambda: notify.has("READY=1") or proc.returncode is not None, READY_TIMEOUT_S, "READY=1 from the agent"
        )
        assert proc.returncode is None, f"the agent exited with {proc.returncode}"
        await wait_until(answered, READY_TIMEOUT_S, "the agent to poll its sensor")
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        stderr = (await asyncio.wait_for(proc.stderr.read(), READY_TIMEOUT_S)).decode()
        code = await asyncio.wait_for(proc.wait(), READY_TIMEOUT_S)
        assert code == 0, stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await notify.close()
    return read_modules(modules_file)


@pytest.mark.parametrize("web", [True, False], ids=["status-page", "no-status-page"])
async def test_serial_site_with_mqtt_uplink_loads_no_modbus_and_no_http_uplink(tmp_path: Path, web: bool) -> None:
    async with PwdSimulator(sensor_ids=["1"]) as pwd:
        text = _site_toml(
            tmp_path / "state",
            f'name = "pwd-line"\nkind = "serial"\nport = "{pwd.port}"\nbytesize = 8\nparity = "N"\nstopbits = 1',
            'id = "pwd-01"\nprofile = "vaisala_pwd22"\nbus = "pwd-line"\nsensor_id = "1"',
            # Nothing listens there: the uplink's module is imported at start all the same.
            f'name = "broker"\nkind = "mqtt"\nhost = "127.0.0.1"\nport = {free_port()}\ntls = false',
            web=web,
        )
        modules = await _run_and_list_modules(tmp_path, text, lambda: pwd.answers >= 2)

    # What this site does use was loaded (the lists below are not empty by accident).
    for used in ("serial", "edgeagent.transports.serial", "edgeagent.devices.pwd", "aiomqtt", "edgeagent.uplinks.mqtt"):
        assert used in modules, used
    # ...and what it does not use was not.
    unused = ["pymodbus", "edgeagent.transports.modbus", "edgeagent.uplinks.http", "bleak", "cryptography"]
    if web:
        assert "aiohttp.web" in modules  # the status page
    else:
        unused += ["aiohttp", "edgeagent.web"]
    for name in unused:
        assert not loaded(modules, name), f"{name} was imported by a serial + MQTT site (status page {web})"


async def test_modbus_site_with_http_uplink_loads_modbus_and_http_uplink(tmp_path: Path) -> None:
    async with WaterLevelSimulator(unit_ids=[1]) as sensor, IngestServer() as ingest:
        text = _site_toml(
            tmp_path / "state",
            f'name = "flood"\nkind = "modbus_tcp"\nhost = "127.0.0.1"\nport = {sensor.port}',
            'id = "wl-01"\nprofile = "generic_water_level"\nbus = "flood"\nunit_id = 1',
            f'name = "platform"\nkind = "http"\nurl = "{ingest.url}"\nretry_max_ms = 500',
        )
        modules = await _run_and_list_modules(tmp_path, text, lambda: ingest.stats.readings_received > 0)

    for used in ("pymodbus", "edgeagent.transports.modbus", "aiohttp.client", "edgeagent.uplinks.http"):
        assert used in modules, used
    for unused in ("aiomqtt", "paho", "edgeagent.uplinks.mqtt", "edgeagent.devices.ble", "bleak", "cryptography"):
        assert not loaded(modules, unused), f"{unused} was imported by a Modbus + HTTP site"


# A module, what importing it may not pull in, and what it must (so the probe itself is checked).
PROBES = [
    ("edgeagent.transports.serial", ("pymodbus", "aiohttp", "bleak"), "serial"),
    ("edgeagent.devices.build", ("pymodbus", "bleak", "cryptography", "aiohttp"), "edgeagent.devices.scheduler"),
    ("edgeagent.devices.pwd", ("pymodbus", "bleak"), "serial"),
    ("edgeagent.devices.tools", ("pymodbus", "bleak", "cryptography"), "edgeagent.devices.build"),
    ("edgeagent.uplinks.mqtt", ("aiohttp", "edgeagent.uplinks.http"), "aiomqtt"),
    ("edgeagent.uplinks.http", ("aiomqtt", "paho"), "aiohttp.client"),
    ("edgeagent.protocols.bthome", ("cryptography",), "edgeagent.errors"),
    ("edgeagent.transports.modbus", ("aiohttp", "bleak"), "pymodbus"),
]


@pytest.mark.parametrize(("module", "forbidden", "expected"), PROBES, ids=[p[0] for p in PROBES])
def test_importing_a_part_loads_only_its_own_libraries(module: str, forbidden: tuple[str, ...], expected: str) -> None:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    modules = set(out.split())
    assert loaded(modules, expected), f"importing {module} did not load {expected}: the probe is broken"
    pulled = [name for name in forbidden if loaded(modules, name)]
    assert not pulled, f"importing {module} pulled in {pulled}"
