"""The technician's commands: scan, read, write, run as real processes against simulated devices.

The simulators run in the test's event loop on ptys; the CLI is a separate process that
opens the pty like a USB adapter, as a technician's laptop would.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeagent.cli import format_ble_scan
from edgeagent.config import load_config
from edgeagent.devices.tools import read_device, scan_ble
from edgeagent.sim.ble import BthomeManholeSensor, PhoneNoise, RuuviTagSim, SimulatedRadio
from edgeagent.sim.modbus_rtu import RtuBusSimulator
from edgeagent.sim.modbus_units import LampControllerUnit, SimUnit, WaterLevelUnit

pytestmark = pytest.mark.timeout(60)

SERVED = (3, 7, 12, 200)


async def _cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgeagent",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout=45)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def line() -> AsyncIterator[RtuBusSimulator]:
    units: dict[int, SimUnit] = {uid: WaterLevelUnit() for uid in SERVED}
    units[7] = SimUnit()  # a device with nothing at register 0: it answers with exception 02
    units[31] = LampControllerUnit(dim_level=70)
    async with RtuBusSimulator(units, baudrate=9600, line_timing=True) as sim:
        yield sim


async def test_scan_modbus_finds_exactly_the_served_unit_ids(line: RtuBusSimulator) -> None:
    code, out, err = await _cli("scan", "modbus", "--port", line.port, "--baud", "9600", "--units", "1-20,200")
    assert code == 0, err
    found = [int(w.split()[1].rstrip(":")) for w in out.splitlines() if w.startswith("unit ")]
    assert found == list(SERVED)  # and not 31, which answers but was not asked for
    assert out.strip().endswith("found 4: 3, 7, 12, 200")
    assert "unit 7: present (answered exception 02 (illegal data address)" in out
    asked = sorted({unit for unit, *_ in line.log})
    assert asked == [*range(1, 21), 200]


async def test_scan_modbus_on_a_missing_port_says_so() -> None:
    code, _, err = await _cli("scan", "modbus", "--port", "/dev/no-such-port", "--units", "1-2")
    assert code == 1
    assert "cannot open /dev/no-such-port" in err and "No such file" in err


def _config(tmp_path: Path, port: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        f"""
[gateway]
id = "gw-bench"
state_dir = "{tmp_path / "state"}"

[[buses]]
name = "pole"
kind = "modbus_rtu"
port = "{port}"
baudrate = 9600
timeout_ms = 300

[[devices]]
id = "lamp-01"
profile = "smart_lamp_controller"
bus = "pole"
unit_id = 31
[devices.asset]
location = "bench"
owner = "tests"

[[devices]]
id = "wl-03"
profile = "generic_water_level"
bus = "pole"
unit_id = 3
[devices.asset]
location = "bench"
owner = "tests"

[[devices]]
id = "wl-09"
profile = "generic_water_level"
bus = "pole"
unit_id = 9
[devices.asset]
location = "bench, not connected"
owner = "tests"
"""
    )
    return path


async def test_read_prints_values_with_units_and_labels(tmp_path: Path, line: RtuBusSimulator) -> None:
    config = _config(tmp_path, line.port)
    code, out, err = await _cli("read", "--config", str(config), "lamp-01")
    assert code == 0, err
    assert "lamp-01 dim_level = 70 %" in out
    assert "lamp-01 mode = 1 code (schedule)" in out
    assert "lamp-01 lamp_on = 1 flag" in out
    assert "lamp-01 voltage = " in out and " V" in out
    code, out, err = await _cli("read", "--config", str(config), "--timeout-s", "5", "wl-09")
    assert code == 1
    assert "wl-09: no answer from unit 9" in err
    code, _, err = await _cli("read", "--config", str(config), "nope")
    assert code == 2 and err.startswith("no device 'nope' in the config; known: lamp-01, wl-03, wl-09")


async def test_write_asks_first_and_reads_back(tmp_path: Path, line: RtuBusSimulator) -> None:
    config = _config(tmp_path, line.port)
    lamp = line.units[31]
    code, out, err = await _cli("write", "--config", str(config), "lamp-01", "dim_level", "35", stdin="n\n")
    assert code == 2 and "not confirmed" in err
    assert "write 35 % to lamp-01.dim_level (holding register 0, unit 31 on bus pole" in out
    assert lamp.tables["holding"][0] == 70 and lamp.writes == 0

    code, out, err = await _cli("write", "--config", str(config), "lamp-01", "dim_level", "35", stdin="y\n")
    assert code == 0, err
    assert "wrote 35 %" in out and "read back: lamp-01 dim_level = 35 %" in out
    assert lamp.tables["holding"][0] == 35

    code, out, err = await _cli("write", "--config", str(config), "--yes", "lamp-01", "lamp_on", "off")
    assert code == 0, err
    assert "read back: lamp-01 lamp_on = 0 flag" in out

    code, _, err = await _cli("write", "--config", str(config), "--yes", "lamp-01", "dim_level", "250")
    assert code == 2 and "above the maximum 100" in err
    code, _, err = await _cli("write", "--config", str(config), "--yes", "wl-03", "water_level", "1")
    assert code == 2 and "read-only" in err


async def test_scan_ble_lists_advertisers_with_decoded_values() -> None:
    key = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
    radio = SimulatedRadio(
        [
            BthomeManholeSensor("54:48:E6:8F:80:A5", key=key, interval_s=0.05),
            BthomeManholeSensor("54:48:E6:8F:80:B2", interval_s=0.05, rssi=-60),
            RuuviTagSim("C8:25:2D:8E:9C:10", interval_s=0.05),
            PhoneNoise("4C:11:22:33:44:55", interval_s=0.05, rssi=-90),
        ]
    )
    async with radio:
        heard = await scan_ble(0.5, backend=radio.backend())
    table = format_ble_scan(heard)
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("54:48:E6:8F:80:B2  -60 dBm BTHome v2 'manhole': battery_pct=87")
    assert "distance_mm=" in lines[0]
    assert any("54:48:E6:8F:80:A5" in ln and "encrypted: needs its key" in ln for ln in lines)
    assert any("RuuviTag format 5" in ln and "humidity_pct=" in ln for ln in lines)
    assert lines[-1].startswith("4C:11:22:33:44:55  -90 dBm unknown")


async def test_scan_ble_without_dbus_is_a_clear_error() -> None:
    code, _, err = await _cli("scan", "ble", "--seconds", "0.5")
    assert code == 1
    assert "BLE unavailable" in err and "D-Bus" in err


async def test_read_a_ble_device_through_the_tools(tmp_path: Path) -> None:
    path = tmp_path / "ble.toml"
    path.write_text(
        """
[gateway]
id = "gw"
[[buses]]
name = "ble"
kind = "ble"
[[devices]]
id = "cab-01"
profile = "ruuvitag"
bus = "ble"
mac = "c8:25:2d:8e:9c:10"
[devices.asset]
location = "cabinet"
owner = "tests"
"""
    )
    radio = SimulatedRadio([RuuviTagSim("C8:25:2D:8E:9C:10", interval_s=0.05)])
    async with radio:
        result = await read_device(load_config(path), "cab-01", timeout_s=5, ble_backend=radio.backend())
    points = {r.point: r for r in result.readings}
    assert points["humidity"].unit == "%RH" and points["temperature"].unit == "Cel"
