"""``edgeagent doctor`` against real things: closed and silent loopback ports, a file where a
folder should be, a missing /dev path, a real pty, a self-signed TLS server, and the
local ingest with and without the right token."""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeagent import doctor
from edgeagent.clock import PLAUSIBLE_FROM, kernel_synchronized
from edgeagent.doctor import (
    UNIT_DEVICE_GROUPS,
    UNIT_STATE_DIR,
    Check,
    Identity,
    Status,
    check_clock,
    check_serial_ports,
    check_store,
    diagnose,
    serial_ports,
)
from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from tests.faketime import FakeClock

REPO = Path(__file__).resolve().parents[1]
NOBODY = Identity("nobody", 65534, frozenset({65534}))


def _site_toml(*, state_dir: str, bus_port: int, url: str, token_file: str | None = None) -> str:
    token = f'token_file = "{token_file}"\n' if token_file else ""
    return f"""
[gateway]
id = "gw-doctor-test"
state_dir = "{state_dir}"

[web]
enabled = false

[[buses]]
name = "field"
kind = "modbus_tcp"
host = "127.0.0.1"
port = {bus_port}

[[devices]]
id = "wl-1"
profile = "generic_water_level"
bus = "field"
unit_id = 1
[devices.asset]
location = "test bench"
owner = "test"

[[uplinks]]
name = "platform"
kind = "http"
url = "{url}"
{token}"""


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that completes the TCP handshake but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


async def _diagnose(path: Path, timeout_s: float = 2.0) -> list[Check]:
    checks, _ = await diagnose(path, service_user=Identity.current().name, timeout_s=timeout_s, emit=lambda c: None)
    return checks


def _only(checks: list[Check], subject_start: str) -> Check:
    found = [c for c in checks if c.subject.startswith(subject_start)]
    assert len(found) == 1, (subject_start, [c.line() for c in checks])
    return found[0]


def test_misconfigured_site_names_each_problem_and_its_fix(tmp_path: Path, closed_port: int) -> None:
    (tmp_path / "not-a-folder").write_text("a file where the state folder should be")
    config = tmp_path / "site.toml"
    config.write_text(
        _site_toml(state_dir="not-a-folder/state", bus_port=closed_port, url=f"http://127.0.0.1:{closed_port}/ingest")
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "edgeagent", "doctor", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 15
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    expected = [
        rf"FAIL Modbus TCP bus field at 127\.0\.0\.1:{closed_port}: cannot connect: connection refused  fix: check",
        rf"FAIL store folder {tmp_path}/not-a-folder/state: cannot be a folder: {tmp_path}/not-a-folder is a file"
        r"  fix: set gateway\.state_dir to a folder",
        rf"FAIL upstream platform TCP 127\.0\.0\.1:{closed_port}: cannot connect: connection refused  fix: check",
    ]
    for pattern in expected:
        assert any(re.match(pattern, line) for line in lines), f"{pattern!r} not in:\n{done.stdout}"
    assert re.search(r"^\d+ checks: 3 failed, \d+ warnings$", done.stdout, re.MULTILINE), done.stdout
    assert all(re.match(r"^(OK  |WARN|FAIL) ", line) for line in lines[:-1]), done.stdout


def test_invalid_config_exits_2_with_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text('[gateway]\nid = "gw"\nstate_dirr = "typo"\n')
    done = subprocess.run(
        [sys.executable, "-m", "edgeagent", "doctor", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert re.search(rf"^FAIL config {config}: gateway\.state_dirr: .*  fix: edit {config}", done.stdout, re.M)


def test_missing_config_fails(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edgeagent", "doctor", "--config", str(tmp_path / "absent.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "cannot read: No such file or directory" in done.stdout


def test_missing_serial_port() -> None:
    [check] = check_serial_ports([("rs485", "/dev/ttyEDGEAGENT-missing")], Identity.current())
    assert check.status is Status.FAIL
    assert check.subject == "serial port /dev/ttyEDGEAGENT-missing (bus rs485)"
    assert check.detail == "does not exist"
    assert "/dev/serial/by-id/" in check.fix


def test_real_pty_is_judged_for_the_service_user() -> None:
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        [as_me] = check_serial_ports([("bench", path)], Identity.current())
        [as_nobody] = check_serial_ports([("bench", path)], NOBODY)
    finally:
        os.close(master)
        os.close(slave)
    # A pty exists and is a tty, but the unit's DevicePolicy=closed does not let ptys through.
    assert (as_me.status, as_me.fix) == (Status.WARN, "systemctl edit edgeagent: [Service] DeviceAllow=char-pts rw")
    assert as_nobody.status is Status.FAIL
    assert as_nobody.detail.startswith("not readable and writable by nobody")


def test_a_plain_file_is_not_a_serial_port(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm for a plain file under /dev")
    path = shm / f"edgeagent-doctor-{os.getpid()}"
    path.write_text("")
    try:
        [check] = check_serial_ports([("bench", str(path))], Identity.current())
    finally:
        path.unlink()
    assert (check.status, check.detail) == (Status.FAIL, "is not a character device")


def test_serial_ports_are_found_by_attribute() -> None:
    site = SimpleNamespace(
        buses=[
            SimpleNamespace(name="rtu", port="/dev/ttyUSB0"),
            SimpleNamespace(name="tcp", port=502),
            SimpleNamespace(name="socket", port="socket://127.0.0.1:5020"),
        ]
    )
    assert serial_ports(site) == [("rtu", "/dev/ttyUSB0")]  # type: ignore[arg-type]


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A folder everyone may enter (pytest's own tmp root is 0700, which nobody cannot pass)."""
    base = Path(tempfile.mkdtemp(prefix="edgeagent-doctor-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def test_store_folder_not_writable_by_the_service_user(open_base: Path) -> None:
    state = open_base / "state"
    state.mkdir(mode=0o755)
    checks = check_store(state, NOBODY, unit_installed=False)
    assert checks[0].status is Status.FAIL
    assert checks[0].detail.startswith("not writable for nobody (")
    assert checks[0].fix == f"chown -R nobody: {state}"


def test_store_folder_behind_a_closed_folder(open_base: Path) -> None:
    closed = open_base / "closed"
    state = closed / "state"
    state.mkdir(parents=True)
    closed.chmod(0o700)
    checks = check_store(state, NOBODY, unit_installed=False)
    assert (checks[0].status, checks[0].fix) == (Status.FAIL, f"chmod o+x {closed}, or keep the store elsewhere")


def test_store_file_left_by_root(open_base: Path) -> None:
    """The classic: ``edgeagent run`` once by hand as root leaves a buffer the service cannot open."""
    if os.geteuid() != 0:
        pytest.skip("needs root to leave a root-owned buffer behind")
    state = open_base / "state"
    state.mkdir()
    os.chown(state, NOBODY.uid, next(iter(NOBODY.gids)))
    (state / "buffer.sqlite").write_bytes(b"")
    (state / "buffer.sqlite").chmod(0o600)
    checks = check_store(state, NOBODY, unit_installed=False)
    assert _only(checks, "store folder").status is Status.OK
    problem = _only(checks, "store file")
    assert problem.status is Status.FAIL
    assert "was the agent run by hand as root?" in problem.detail
    assert problem.fix == f"chown nobody: {state}/buffer.sqlite*"


def test_the_unit_only_lets_the_service_write_its_state_directory(tmp_path: Path) -> None:
    checks = check_store(tmp_path, Identity.current(), unit_installed=True)
    assert checks[0].status is Status.FAIL
    assert f"may write only {UNIT_STATE_DIR}" in checks[0].detail


def test_free_space_is_reported(tmp_path: Path) -> None:
    checks = check_store(tmp_path, Identity.current(), unit_installed=False)
    assert _only(checks, "free space").detail.endswith("GiB")


def test_clock_is_judged_plausible_then_synchronised() -> None:
    now = time.time()
    # Not set (1970, or anything before the agent's floor) fails, synchronised or not.
    for wrong in (600.0, PLAUSIBLE_FROM - 1):
        [unset] = check_clock(now=wrong, synced=True)
        assert unset.status is Status.FAIL and "not set" in unset.detail
    # Plausible but not kept by NTP, or not known to be, is a warning with the fix.
    for synced in (False, None):
        [drifting] = check_clock(now=now, synced=synced)
        assert drifting.status is Status.WARN
        assert drifting.fix.startswith("timedatectl set-ntp true")
        assert "systemd-timesyncd" in drifting.fix and "chrony" in drifting.fix
    [good] = check_clock(now=now, synced=True)
    assert (good.status, good.detail.endswith("synchronised by NTP")) == (Status.OK, True)
    assert kernel_synchronized() in (True, False, None)


def _clock_line(stdout: str) -> str:
    [line] = [line for line in stdout.splitlines() if line[5:].startswith("clock: ")]
    return line


def test_doctor_on_a_gateway_still_in_1970_fails_the_clock_and_says_how_to_fix_it(
    tmp_path: Path, closed_port: int
) -> None:
    clock = FakeClock(tmp_path)
    clock.set_1970()
    config = tmp_path / "site.toml"
    url = f"http://127.0.0.1:{closed_port}/ingest"
    config.write_text(_site_toml(state_dir=str(tmp_path / "state"), bus_port=closed_port, url=url))
    command = [sys.executable, "-m", "edgeagent", "doctor", "--config", str(config)]
    env = {**os.environ, **clock.env()}
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    line = _clock_line(done.stdout)
    assert re.match(r"FAIL clock: says 1970-01-01 00:1\d:\d\d UTC, not set: ", line), line
    assert line.endswith("fix: " + doctor.CLOCK_FIX), line

    clock.right()  # NTP answered: whether it keeps the clock is the kernel's word
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    line = _clock_line(done.stdout)
    synced = kernel_synchronized()
    assert line.startswith("OK   clock: " if synced else "WARN clock: "), line
    assert "not set" not in line and ("fix: timedatectl set-ntp true" in line) is not synced, line


def test_unit_file_and_doctor_agree() -> None:
    unit = (REPO / "packaging" / "edgeagent.service").read_text()
    allowed = re.findall(r"^DeviceAllow=char-(\S+) rw$", unit, re.MULTILINE)
    assert sorted(allowed) == sorted(UNIT_DEVICE_GROUPS)
    assert f"StateDirectory={UNIT_STATE_DIR.name}\n" in unit


async def test_healthy_site_has_no_failures(tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer) -> None:
    config = tmp_path / "site.toml"
    config.write_text(_site_toml(state_dir="state", bus_port=sensor.port, url=ingest.url))
    checks = await _diagnose(config)
    assert [c.line() for c in checks if c.status is Status.FAIL] == []
    assert _only(checks, "Modbus TCP bus field").detail.startswith("connects")
    assert _only(checks, "upstream platform auth").detail == "accepted an empty batch (HTTP 200)"


async def test_wrong_and_missing_token(tmp_path: Path, sensor: WaterLevelSimulator) -> None:
    token = tmp_path / "platform.token"
    token.write_text("not-the-token\n")
    async with IngestServer(token="the-token") as guarded:
        config = tmp_path / "site.toml"
        config.write_text(_site_toml(state_dir="state", bus_port=sensor.port, url=guarded.url, token_file=str(token)))
        refused = _only(await _diagnose(config), "upstream platform auth")
        token.unlink()
        missing = _only(await _diagnose(config), "upstream platform token file")
        config.write_text(_site_toml(state_dir="state", bus_port=sensor.port, url=guarded.url))
        tokenless = _only(await _diagnose(config), "upstream platform auth")
    assert (refused.status, refused.detail) == (Status.FAIL, "the token was refused (HTTP 401)")
    assert (missing.status, missing.detail) == (Status.FAIL, "cannot read: No such file or directory")
    assert missing.fix.startswith("install -m 0640 -g ")
    assert (tokenless.status, tokenless.detail) == (Status.FAIL, "wants a token (HTTP 401)")


async def test_silent_upstream_times_out(tmp_path: Path, closed_port: int, silent_port: int) -> None:
    config = tmp_path / "site.toml"
    config.write_text(_site_toml(state_dir="state", bus_port=closed_port, url=f"http://127.0.0.1:{silent_port}/x"))
    started = time.monotonic()
    checks = await _diagnose(config, timeout_s=0.5)
    assert time.monotonic() - started < 5
    auth = _only(checks, "upstream platform auth")
    assert (auth.status, auth.detail) == (Status.FAIL, "no HTTP answer: no answer within 0.5 s")


async def test_unresolvable_upstream(tmp_path: Path, closed_port: int) -> None:
    config = tmp_path / "site.toml"
    config.write_text(_site_toml(state_dir="state", bus_port=closed_port, url="https://edgeagent-doctor.invalid/x"))
    started = time.monotonic()
    dns = _only(await _diagnose(config, timeout_s=1.0), "upstream platform DNS")
    assert time.monotonic() - started < 5
    assert dns.status is Status.FAIL
    assert dns.detail.startswith("cannot resolve: ")


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeagent-doctor-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


@pytest.fixture
async def tls_port(tmp_path: Path) -> AsyncIterator[int]:
    """A loopback TLS server with a self-signed certificate."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=_self_signed(tmp_path))
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_untrusted_certificate(tmp_path: Path, closed_port: int, tls_port: int) -> None:
    config = tmp_path / "site.toml"
    config.write_text(_site_toml(state_dir="state", bus_port=closed_port, url=f"https://127.0.0.1:{tls_port}/x"))
    tls = _only(await _diagnose(config), "upstream platform TLS")
    assert tls.status is Status.FAIL
    assert tls.detail.startswith("certificate not trusted: self")
    assert "clock" in tls.fix


def _mqtt_site_toml(*, state_dir: str, bus_port: int, broker_port: int, login: str = "") -> str:
    http = _site_toml(state_dir=state_dir, bus_port=bus_port, url="http://127.0.0.1:1/unused")
    head = http[: http.index("[[uplinks]]")]
    return (
        head
        + f"""[[uplinks]]
name = "broker"
kind = "mqtt"
host = "127.0.0.1"
port = {broker_port}
tls = false
{login}"""
    )


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[int]:
    """A real MQTT 5 broker on loopback: anonymous login refused, user "gw" with password "right"."""
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None or not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto is not installed (apt install mosquitto)")
    passwords = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "gw", "right"], check=True, capture_output=True)
    passwords.chmod(0o600)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = tmp_path / "mosquitto.conf"
    # As root, mosquitto would drop to user "mosquitto", who cannot read pytest's 0700 folders.
    stay = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"{stay}listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n")
    broker = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if broker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not start: {broker.stderr.read().decode() if broker.stderr else ''}")
            time.sleep(0.05)
        yield port
    finally:
        broker.terminate()
        broker.wait(timeout=10)
        if broker.stderr:
            broker.stderr.close()


async def test_mqtt_login_accepted_and_refused(tmp_path: Path, closed_port: int, mosquitto: int) -> None:
    password = tmp_path / "broker.password"
    config = tmp_path / "site.toml"

    async def auth(login: str) -> Check:
        config.write_text(_mqtt_site_toml(state_dir="state", bus_port=closed_port, broker_port=mosquitto, login=login))
        return _only(await _diagnose(config), "upstream broker auth")

    password.write_text("right\n")
    accepted = await auth(f'username = "gw"\npassword_file = "{password}"\n')
    password.write_text("wrong\n")
    refused = await auth(f'username = "gw"\npassword_file = "{password}"\n')
    anonymous = await auth("")
    assert (accepted.status, accepted.detail) == (Status.OK, "the broker accepted the login")
    # mosquitto 2 answers a wrong password, and no login at all, with "not authorised".
    for refusal in (refused, anonymous):
        assert refusal.status is Status.FAIL
        assert refusal.detail in ("not authorised (reason 0x87)", "bad user name or password (reason 0x86)")
        assert "password_file" in refusal.fix


async def test_mqtt_port_that_is_not_a_broker(tmp_path: Path, closed_port: int, silent_port: int) -> None:
    config = tmp_path / "site.toml"
    config.write_text(_mqtt_site_toml(state_dir="state", bus_port=closed_port, broker_port=silent_port))
    auth = _only(await _diagnose(config, timeout_s=0.5), "upstream broker auth")
    assert (auth.status, auth.detail) == (Status.FAIL, "no MQTT answer: no answer within 0.5 s")


def test_bluez_group_matters_only_where_its_policy_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    open_policy = '<policy group="bluetooth"><allow send_destination="org.bluez"/></policy>\n'
    open_policy += '<policy context="default"><allow send_destination="org.bluez"/></policy>\n'
    group_only = '<policy group="bluetooth"><allow send_destination="org.bluez"/></policy>\n'
    group_only += '<policy context="default"><deny send_destination="org.bluez"/></policy>\n'
    monkeypatch.setattr(doctor, "BLUEZ_POLICY_DIRS", (tmp_path,))
    assert doctor._bluez_needs_group() is False  # no BlueZ installed
    (tmp_path / "bluetooth.conf").write_text(open_policy)
    assert doctor._bluez_needs_group() is False
    (tmp_path / "bluetooth.conf").write_text(group_only)
    assert doctor._bluez_needs_group() is True


async def test_bluetooth_problems_fail_only_when_the_config_has_a_ble_bus() -> None:
    if any(Path("/sys/class/bluetooth").glob("hci*")):
        pytest.skip("this machine has a Bluetooth adapter")
    me = Identity.current()
    optional = _only(await doctor.check_bluetooth(me, 1.0), "Bluetooth adapter")
    needed = _only(await doctor.check_bluetooth(me, 1.0, needed=True, adapters={"hci0"}), "Bluetooth adapter")
    assert (optional.status, optional.detail) == (Status.WARN, "none found (needed only for BLE sensors)")
    assert (needed.status, needed.detail) == (Status.FAIL, "none found")
