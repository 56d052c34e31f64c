"""``edgeagent doctor``: what commonly goes wrong at install time, checked, each with its fix.

The checks, in order: the config; the service user; serial ports; Modbus TCP devices;
D-Bus and the Bluetooth adapter; the store's folder and free space; the clock; each
upstream, stage by stage (DNS, TCP, TLS, auth), so the line that fails names the layer
to look at. Auth is tried for real but leaves nothing behind: an HTTP uplink gets an
empty SenML pack with its token; an MQTT broker gets an MQTT 5 login with a clean start
under the doctor's own client id, so the running agent's session is not taken over.

Each check prints one line: ``OK``, ``WARN`` or ``FAIL``, what was checked, and for a
problem the fix. Exit 0 when nothing failed, 1 when something did, 2 when the
config itself is invalid (as ``check-config``).

Run as root, as an operator does after installing, access is judged for the service
user (``edgeagent``) from owner, group and mode bits (ACLs are not read): that user, not
root, opens the ports and writes the store. Every network check has a short timeout,
so the doctor answers in seconds even when nothing is reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import grp
import gzip
import ipaddress
import os
import pwd
import re
import shutil
import socket
import ssl
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgeagent.clock import kernel_synchronized, plausible
from edgeagent.config import HttpUplinkConfig, ModbusTcpBus, MqttUplinkConfig, SiteConfig, load_config
from edgeagent.errors import ConfigError
from edgeagent.preflight import STORE_FILES
from edgeagent.sync.senml import CONTENT_TYPE

SERVICE_USER = "edgeagent"
# The state folder the unit's StateDirectory= creates and ProtectSystem=strict leaves writable.
UNIT_STATE_DIR = Path("/var/lib/edgeagent")
UNIT_FILES = (Path("/etc/systemd/system/edgeagent.service"), Path("/lib/systemd/system/edgeagent.service"))
# Device groups (/proc/devices names) the unit's DeviceAllow= lets through DevicePolicy=closed.
UNIT_DEVICE_GROUPS = ("ttyS", "ttyUSB", "ttyACM", "ttyAMA")
BLUEZ_POLICY_DIRS = (Path("/etc/dbus-1/system.d"), Path("/usr/share/dbus-1/system.d"))
NET_TIMEOUT_S = 3.0
FREE_FAIL_BYTES = 64 * 2**20
FREE_WARN_BYTES = 512 * 2**20
CLOCK_FIX = (
    "timedatectl set-ntp true, then check the time service: "
    "systemctl status systemd-timesyncd (or chronyc tracking where chrony is installed)"
)


class Status(enum.Enum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: what was checked, the verdict, and for a problem what to do."""

    status: Status
    subject: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.value:<4} {self.subject}: {self.detail}"
        return f"{text}  fix: {self.fix}" if self.fix and self.status is not Status.OK else text


def _ok(subject: str, detail: str) -> Check:
    return Check(Status.OK, subject, detail)


def _warn(subject: str, detail: str, fix: str) -> Check:
    return Check(Status.WARN, subject, detail, fix)


def _fail(subject: str, detail: str, fix: str) -> Check:
    return Check(Status.FAIL, subject, detail, fix)


@dataclass(frozen=True, slots=True)
class Identity:
    """Whose access is judged: the service user, or whoever runs the doctor when it is missing."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def of_user(cls, name: str) -> Identity | None:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            return None
        gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
        return cls(name, pw.pw_uid, frozenset(gids))

    @classmethod
    def current(cls) -> Identity:
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name, uid, frozenset({os.getegid(), *os.getgroups()}))

    def may(self, st: os.stat_result, want: int) -> bool:
        """Mode-bit access (``want`` of R_OK|W_OK|X_OK); only the first matching class counts."""
        if self.uid == 0:
            return True
        if st.st_uid == self.uid:
            bits = st.st_mode >> 6
        elif st.st_gid in self.gids:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return bits & want == want

    def blocked_at(self, path: Path) -> Path | None:
        """The first folder above ``path`` this identity may not enter, if any."""
        for folder in reversed(path.parents):
            try:
                if not self.may(folder.stat(), os.X_OK):
                    return folder
            except OSError:
                return None
        return None


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group} {stat.S_IMODE(st.st_mode):04o}"


# --- config and user ---------------------------------------------------------------


def check_config(path: Path) -> tuple[list[Check], SiteConfig | None]:
    subject = f"config {path}"
    try:
        site = load_config(path)
    except ConfigError as exc:
        fix = f"edit {path} (the example: /usr/share/doc/edgeagent, config/lamp-pole.toml)"
        return [_fail(subject, str(p).removeprefix(f"{path}: "), fix) for p in exc.problems], None
    counts = f"{len(site.buses)} buses, {len(site.devices)} devices, {len(site.uplinks)} uplinks"
    return [_ok(subject, f"valid ({counts})")], site


def check_service_user(name: str) -> tuple[list[Check], Identity]:
    who = Identity.of_user(name)
    if who is None:
        me = Identity.current()
        return [
            _warn(
                f"service user {name}",
                f"does not exist; judging access as {me.name} instead",
                "systemd-sysusers edgeagent.conf (the edgeagent package does this on install)",
            )
        ], me
    groups = sorted(g.gr_name for g in grp.getgrall() if g.gr_gid in who.gids)
    return [_ok(f"service user {name}", f"uid {who.uid}, groups {', '.join(groups)}")], who


def check_config_readable(path: Path, who: Identity) -> list[Check]:
    subject = f"config {path} for {who.name}"
    blocked = who.blocked_at(path)
    if blocked is not None:
        return [_fail(subject, f"cannot enter {blocked}", f"chgrp {who.name} {blocked} && chmod g+x {blocked}")]
    if not who.may(path.stat(), os.R_OK):
        return [
            _fail(subject, f"not readable ({_owner(path.stat())})", f"chgrp {who.name} {path} && chmod 0640 {path}")
        ]
    return [_ok(subject, "readable")]


# --- serial ports --------------------------------------------------------------------


def _char_device_names() -> dict[int, str]:
    """Major number -> driver name, from the "Character devices" part of /proc/devices."""
    names: dict[int, str] = {}
    try:
        text = Path("/proc/devices").read_text()
    except OSError:
        return names
    for line in text.split("Block devices:")[0].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def _modem_manager_running() -> bool:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "ModemManager":
                return True
        except OSError:
            continue
    return False


def serial_ports(site: SiteConfig) -> list[tuple[str, str]]:
    """(bus name, device path) for every bus with a ``port`` that is a /dev path."""
    found = []
    for bus in site.buses:
        port = getattr(bus, "port", None)
        if isinstance(port, str | os.PathLike) and str(port).startswith("/dev/"):
            found.append((bus.name, str(port)))
    return found


def check_serial_ports(ports: Iterable[tuple[str, str]], who: Identity) -> list[Check]:
    checks: list[Check] = []
    majors = _char_device_names()
    ports = list(ports)
    for bus, port in ports:
        subject = f"serial port {port} (bus {bus})"
        try:
            st = os.stat(port)
        except FileNotFoundError:
            checks.append(
                _fail(
                    subject,
                    "does not exist",
                    "plug in the adapter and look at `ls -l /dev/serial/by-id/`; use that by-id path as the"
                    " port, it survives re-plugging",
                )
            )
            continue
        except OSError as exc:
            checks.append(_fail(subject, f"cannot stat: {exc.strerror}", "check the path in the config"))
            continue
        if not stat.S_ISCHR(st.st_mode):
            checks.append(_fail(subject, "is not a character device", "point the port at the tty device"))
            continue
        if not who.may(st, os.R_OK | os.W_OK) or who.blocked_at(Path(port)) is not None:
            group = _owner(st).split()[0].split(":")[1]
            fix = (
                f"usermod -aG {group} {who.name}, then systemctl restart edgeagent"
                if st.st_mode & stat.S_IRGRP and st.st_mode & stat.S_IWGRP
                else f'a udev rule giving it GROUP="dialout", MODE="0660" (now {_owner(st)})'
            )
            checks.append(_fail(subject, f"not readable and writable by {who.name} ({_owner(st)})", fix))
            continue
        driver = majors.get(os.major(st.st_rdev), f"major {os.major(st.st_rdev)}")
        if driver not in UNIT_DEVICE_GROUPS:
            checks.append(
                _warn(
                    subject,
                    f"driver {driver} is not in the unit's DeviceAllow= list",
                    f"systemctl edit edgeagent: [Service] DeviceAllow=char-{driver} rw",
                )
            )
            continue
        checks.append(_ok(subject, f"{driver} device, read/write for {who.name}"))
    if ports and _modem_manager_running():
        checks.append(
            _warn(
                "ModemManager",
                "running; it probes serial ports and can hold them",
                'systemctl disable --now ModemManager, or a udev rule with ENV{ID_MM_DEVICE_IGNORE}="1"',
            )
        )
    return checks


# --- D-Bus and Bluetooth -------------------------------------------------------------


def _system_bus_path() -> Path:
    address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/dbus/system_bus_socket")
    for part in address.split(";")[0].removeprefix("unix:").split(","):
        if part.startswith("path="):
            return Path(part.removeprefix("path="))
    return Path("/run/dbus/system_bus_socket")


async def _bluez_on_bus(timeout_s: float) -> bool:
    """Whether org.bluez (bluetoothd) owns its name on the system bus."""
    from dbus_fast import BusType, Message
    from dbus_fast.aio import MessageBus

    bus = await asyncio.wait_for(MessageBus(bus_type=BusType.SYSTEM).connect(), timeout_s)
    try:
        reply = await asyncio.wait_for(
            bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="NameHasOwner",
                    signature="s",
                    body=["org.bluez"],
                )
            ),
            timeout_s,
        )
    finally:
        bus.disconnect()
    return bool(reply is not None and reply.body and reply.body[0])


def _bluetooth_radio_checks(problem: Callable[[str, str, str], Check], wanted: set[str]) -> list[Check]:
    """The adapters and their rfkill switches, from sysfs."""
    checks: list[Check] = []
    adapters = sorted(p.name for p in Path("/sys/class/bluetooth").glob("hci*"))
    if not adapters:
        checks.append(
            problem(
                "Bluetooth adapter",
                "none found" if wanted or problem is _fail else "none found (needed only for BLE sensors)",
                "plug in or enable the adapter; see `dmesg | grep -i bluetooth`",
            )
        )
    else:
        checks.append(_ok("Bluetooth adapter", ", ".join(adapters)))
        for name in sorted(wanted - set(adapters)):
            checks.append(
                _fail(f"Bluetooth adapter {name}", "named in the config but not present", "see `btmgmt info`")
            )
    for kill in Path("/sys/class/rfkill").glob("rfkill*"):
        try:
            if (kill / "type").read_text().strip() != "bluetooth":
                continue
            soft, hard = (kill / "soft").read_text().strip(), (kill / "hard").read_text().strip()
        except OSError:
            continue
        if "1" in (soft, hard):
            name = (kill / "name").read_text().strip() if (kill / "name").exists() else kill.name
            fix = "rfkill unblock bluetooth" if hard == "0" else "a hardware switch or firmware setting blocks it"
            checks.append(problem(f"Bluetooth radio {name}", "blocked by rfkill", fix))
    return checks


async def check_bluetooth(
    who: Identity, timeout_s: float, *, needed: bool = False, adapters: Iterable[str] = ()
) -> list[Check]:
    """BLE sensors need the system D-Bus, bluetoothd on it, and an unblocked adapter.

    Problems fail when the config has a BLE bus (``needed``), and only warn otherwise.
    """
    from dbus_fast.errors import DBusFastError

    problem = _fail if needed else _warn
    checks: list[Check] = []
    sock = _system_bus_path()
    if not (sock.exists() and stat.S_ISSOCK(sock.stat().st_mode)):
        checks.append(problem("D-Bus system bus", f"no socket at {sock}", "apt install dbus (BLE goes through BlueZ)"))
    else:
        checks.append(_ok("D-Bus system bus", str(sock)))
        try:
            bluez = await _bluez_on_bus(timeout_s)
        except (OSError, TimeoutError, DBusFastError) as exc:
            checks.append(problem("BlueZ", f"cannot ask the bus: {exc!r}", "systemctl status dbus"))
        else:
            if bluez:
                checks.append(_ok("BlueZ", "bluetoothd is on the system bus"))
            else:
                fix = "apt install bluez; systemctl enable --now bluetooth"
                checks.append(problem("BlueZ", "bluetoothd is not running", fix))
    checks.extend(_bluetooth_radio_checks(problem, set(adapters)))
    if _bluez_needs_group() and who.uid != 0:
        try:
            bluetooth_gid: int | None = grp.getgrnam("bluetooth").gr_gid
        except KeyError:
            bluetooth_gid = None
        if bluetooth_gid is not None and bluetooth_gid not in who.gids:
            checks.append(
                problem(
                    f"group bluetooth for {who.name}",
                    "not a member, and this BlueZ's D-Bus policy lets only that group talk to it",
                    f"usermod -aG bluetooth {who.name}",
                )
            )
    return checks


def _bluez_needs_group() -> bool:
    """Whether BlueZ's D-Bus policy is limited to group bluetooth (Debian 12's lets anyone send)."""
    for folder in BLUEZ_POLICY_DIRS:
        try:
            text = (folder / "bluetooth.conf").read_text()
        except OSError:
            continue
        default = re.search(r'<policy context="default">(.*?)</policy>', text, re.DOTALL)
        return not (default and '<allow send_destination="org.bluez"' in default.group(1))
    return False


# --- store ---------------------------------------------------------------------------


def _unit_installed() -> bool:
    return any(p.exists() for p in UNIT_FILES)


def check_store(state_dir: Path, who: Identity, *, unit_installed: bool | None = None) -> list[Check]:
    subject = f"store folder {state_dir}"
    unit_installed = _unit_installed() if unit_installed is None else unit_installed
    checks: list[Check] = []
    if unit_installed and not state_dir.is_relative_to(UNIT_STATE_DIR):
        checks.append(
            _fail(
                subject,
                f"the service may write only {UNIT_STATE_DIR} (ProtectSystem=strict)",
                f'state_dir = "{UNIT_STATE_DIR}", or systemctl edit edgeagent: [Service] ReadWritePaths={state_dir}',
            )
        )
    existing = state_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        checks.append(
            _fail(
                subject,
                f"cannot be a folder: {existing} is a file",
                f'set gateway.state_dir to a folder (default "{UNIT_STATE_DIR}") or move {existing} away',
            )
        )
        return checks
    if existing != state_dir:
        if unit_installed and state_dir == UNIT_STATE_DIR:
            checks.append(_ok(subject, "systemd creates it at the first start (StateDirectory=)"))
        elif not who.may(existing.stat(), os.W_OK | os.X_OK) or who.blocked_at(existing) is not None:
            checks.append(
                _fail(
                    subject,
                    f"does not exist and {who.name} cannot create it in {existing}",
                    f"mkdir -p {state_dir} && chown {who.name}: {state_dir}",
                )
            )
        else:
            checks.append(_ok(subject, f"will be created in {existing}"))
    else:
        checks.extend(_check_existing_store(state_dir, who, subject))
    checks.append(_check_free_space(existing))
    return checks


def _check_existing_store(state_dir: Path, who: Identity, subject: str) -> list[Check]:
    # A real write catches what mode bits cannot show: a read-only mount, a full disk.
    probe = state_dir / f".doctor-{os.getpid()}"
    try:
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as exc:
        return [_fail(subject, f"cannot write: {exc.strerror}", f"check the mount (findmnt -T {state_dir}) and disk")]
    st = state_dir.stat()
    blocked = who.blocked_at(state_dir)
    if blocked is not None:
        return [
            _fail(subject, f"{who.name} cannot enter {blocked}", f"chmod o+x {blocked}, or keep the store elsewhere")
        ]
    if not who.may(st, os.W_OK | os.X_OK):
        return [_fail(subject, f"not writable for {who.name} ({_owner(st)})", f"chown -R {who.name}: {state_dir}")]
    checks = [_ok(subject, f"writable by {who.name}")]
    for name in STORE_FILES:
        path = state_dir / name
        if path.exists() and not who.may(path.stat(), os.R_OK | os.W_OK):
            checks.append(
                _fail(
                    f"store file {path}",
                    f"not writable by {who.name} ({_owner(path.stat())}); was the agent run by hand as root?",
                    f"chown {who.name}: {state_dir}/buffer.sqlite*",
                )
            )
    return checks


def _check_free_space(folder: Path) -> Check:
    usage = shutil.disk_usage(folder)
    subject = f"free space for the store ({folder})"
    shown = f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB"
    if usage.free < FREE_FAIL_BYTES:
        return _fail(subject, shown, "free disk space; the buffer needs room to hold readings during outages")
    if usage.free < FREE_WARN_BYTES:
        return _warn(subject, shown, "free disk space before a long outage fills it")
    return _ok(subject, shown)


# --- clock ---------------------------------------------------------------------------


def check_clock(now: float | None = None, synced: bool | None = None) -> list[Check]:
    """Is the clock plausible (the agent's own floor) and kept by NTP (as timedatectl reads it)?

    An unset clock fails: TLS certificates are not yet valid, and the agent times readings
    from the boot until it is set. Not synchronised is a warning: the agent works, but a
    free-running clock drifts and may be stepped later.
    """
    now = time.time() if now is None else now
    synced = kernel_synchronized() if synced is None else synced
    shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    if not plausible(now):
        detail = f"says {shown}, not set: TLS fails, and readings carry times since boot until it is"
        return [_fail("clock", detail, CLOCK_FIX)]
    if synced is None:
        return [_warn("clock", f"{shown}; cannot tell whether NTP keeps it (adjtimex failed)", CLOCK_FIX)]
    if not synced:
        return [_warn("clock", f"{shown}, plausible but not synchronised by NTP: it drifts", CLOCK_FIX)]
    return [_ok("clock", f"{shown}, synchronised by NTP")]


# --- network -------------------------------------------------------------------------


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _resolve(host: str, port: int, timeout_s: float) -> list[str]:
    """getaddrinfo in a daemon thread: a stuck resolver neither blocks the loop nor the exit."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[str]] = loop.create_future()

    def work() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            loop.call_soon_threadsafe(_settle, done, addresses, None)
        except OSError as exc:
            loop.call_soon_threadsafe(_settle, done, None, exc)

    threading.Thread(target=work, name=f"doctor-dns-{host}", daemon=True).start()
    return await asyncio.wait_for(done, timeout_s)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message}"
    if isinstance(exc, socket.gaierror):
        return str(exc.strerror)
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


async def _connect(host: str, port: int, timeout_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    return reader, writer, (time.monotonic() - started) * 1000


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def check_modbus_bus(bus: ModbusTcpBus, timeout_s: float) -> list[Check]:
    subject = f"Modbus TCP bus {bus.name} at {bus.host}:{bus.port}"
    try:
        _, writer, took_ms = await _connect(bus.host, bus.port, timeout_s)
    except (OSError, TimeoutError) as exc:
        return [
            _fail(
                subject,
                f"cannot connect: {_reason(exc, timeout_s)}",
                "check the converter's address, port (usually 502), power and cabling, and the route to it;"
                " then try: edgeagent read --config FILE DEVICE",
            )
        ]
    await _close(writer)
    return [_ok(subject, f"connects ({took_ms:.0f} ms)")]


def _check_file(subject: str, path: Path, who: Identity, *, secret: bool) -> tuple[Check, str | None]:
    """A file the service reads at start (a token, a password, a certificate); its text if ``secret``."""
    fix = f"install -m 0640 -g {who.name} /dev/stdin {path} (paste it, then Ctrl-D)"
    try:
        text = path.read_text().strip() if secret else ""
        st = path.stat()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        return _fail(subject, f"cannot read: {reason}", fix), None
    if secret and not text:
        return _fail(subject, "is empty", fix), None
    if who.blocked_at(path) is not None or not who.may(st, os.R_OK):
        return _fail(
            subject, f"not readable by {who.name} ({_owner(st)})", f"chgrp {who.name} {path} && chmod 0640 {path}"
        ), None
    return _ok(subject, f"readable by {who.name}"), text or None


async def _reach(
    name: str, host: str, port: int, tls: ssl.SSLContext | None, timeout_s: float, where: str
) -> tuple[list[Check], tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
    """DNS, then TCP, then TLS; stop at the first stage that fails. ``where`` names the config key to fix."""
    checks: list[Check] = []
    if _is_ip(host):
        addresses = [host]
    else:
        try:
            addresses = await _resolve(host, port, timeout_s)
        except (OSError, TimeoutError) as exc:
            fix = f"check the host name in {where}, and DNS: resolvectl status or /etc/resolv.conf"
            return [_fail(f"{name} DNS {host}", f"cannot resolve: {_reason(exc, timeout_s)}", fix)], None
        checks.append(_ok(f"{name} DNS {host}", ", ".join(addresses[:3])))

    connected = None
    error: BaseException | None = None
    for address in addresses[:2]:
        try:
            connected = await _connect(address, port, timeout_s)
            break
        except (OSError, TimeoutError) as exc:
            error = exc
    if connected is None:
        fix = f"check the route (ip route), firewall, modem/APN, and the port in {where}"
        detail = f"cannot connect: {_reason(error, timeout_s)}" if error else "no address"
        return [*checks, _fail(f"{name} TCP {host}:{port}", detail, fix)], None
    reader, writer, took_ms = connected
    checks.append(_ok(f"{name} TCP {host}:{port}", f"connects ({took_ms:.0f} ms)"))
    if tls is not None:
        try:
            await asyncio.wait_for(writer.start_tls(tls, server_hostname=host), timeout_s)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            await _close(writer)
            fix = (
                "check the clock (certificates are date-checked), the CA (ca-certificates), or a proxy intercepting TLS"
            )
            return [*checks, _fail(f"{name} TLS {host}", _reason(exc, timeout_s), fix)], None
        session = writer.get_extra_info("ssl_object")
        checks.append(_ok(f"{name} TLS {host}", f"{session.version() if session else 'TLS'}, certificate trusted"))
    return checks, (reader, writer)


def _post_empty_batch(host: str, port: int, path: str, gateway_id: str, token: str | None) -> bytes:
    # An empty SenML pack: valid (RFC 8428), stores nothing, and passes the same auth as a batch.
    body = gzip.compress(b"[]", mtime=0)
    host_header = f"[{host}]" if ":" in host else host
    host_header += "" if port in (80, 443) else f":{port}"
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host_header}",
        f"Content-Type: {CONTENT_TYPE}",
        "Content-Encoding: gzip",
        f"Content-Length: {len(body)}",
        f"X-Edgeagent-Gateway: {gateway_id}",
        "X-Edgeagent-Count: 0",
        "User-Agent: edgeagent-doctor",
        "Connection: close",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _judge_http(subject: str, status: int, has_token: bool, url: str) -> Check:
    if status in (401, 403):
        if has_token:
            return _fail(subject, f"the token was refused (HTTP {status})", "put the current token in the token file")
        return _fail(subject, f"wants a token (HTTP {status})", "set token_file for this uplink in the config")
    if status == 404:
        return _fail(subject, "no ingest at this path (HTTP 404)", f"check the path of {url}")
    if 200 <= status < 300:
        return _ok(subject, f"accepted an empty batch (HTTP {status})")
    if status >= 500:
        return _warn(
            subject, f"upstream error (HTTP {status}); the agent keeps retrying", "ask the platform's operator"
        )
    return _warn(subject, f"token not refused, but HTTP {status} for an empty batch", f"check the url {url}")


async def check_http_uplink(up: HttpUplinkConfig, gateway_id: str, who: Identity, timeout_s: float) -> list[Check]:
    """The token file, then DNS, TCP, TLS, and an empty batch POSTed with the token."""
    url = str(up.url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    name = f"upstream {up.name}"
    checks: list[Check] = []
    token = None
    if up.token_file is not None:
        check, token = _check_file(f"{name} token file {up.token_file}", up.token_file, who, secret=True)
        checks.append(check)
        if check.status is Status.FAIL:
            return checks
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    found, link = await _reach(name, host, port, tls, timeout_s, "the url")
    checks += found
    if link is None:
        return checks
    reader, writer = link
    subject = f"{name} auth"
    try:
        writer.write(_post_empty_batch(host, port, parts.path or "/", gateway_id, token))
        await asyncio.wait_for(writer.drain(), timeout_s)
        status_line = await asyncio.wait_for(reader.readline(), timeout_s)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        return [*checks, _fail(subject, f"no HTTP answer: {_reason(exc, timeout_s)}", f"check the url {url}")]
    finally:
        await _close(writer)
    fields = status_line.decode("latin-1").split()
    if len(fields) < 2 or not fields[1].isdigit():
        return [*checks, _fail(subject, f"not an HTTP answer: {status_line[:60]!r}", f"check the url {url}")]
    return [*checks, _judge_http(subject, int(fields[1]), token is not None, url)]


def _mqtt_string(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def _mqtt_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_connect_packet(client_id: str, username: str | None, password: str | None, keepalive_s: int = 10) -> bytes:
    """An MQTT 5 CONNECT with a clean start and no session kept (so the agent's session is untouched)."""
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    variable = _mqtt_string(b"MQTT") + bytes([5, flags]) + keepalive_s.to_bytes(2, "big") + _mqtt_varint(0)
    payload = _mqtt_string(client_id.encode())
    if username is not None:
        payload += _mqtt_string(username.encode())
    if password is not None:
        payload += _mqtt_string(password.encode())
    body = variable + payload
    return bytes([0x10]) + _mqtt_varint(len(body)) + body


# MQTT 5 CONNACK reason codes that mean the configuration is wrong, with the fix.
MQTT_REFUSALS = {
    0x84: ("does not speak MQTT 5", "edgeagent needs an MQTT 5 broker (mosquitto >= 1.6, EMQX, HiveMQ)"),
    0x85: ("refused the client id", "set client_id for this uplink to one the broker accepts"),
    0x86: ("bad user name or password", "check username and password_file for this uplink"),
    # mosquitto answers a wrong password with 0x87 too.
    0x87: ("not authorised", "check username and password_file; if right, ask the broker's operator to allow them"),
    0x8C: ("wants another authentication method", "ask the broker's operator how gateways log in"),
}


async def _read_connack(reader: asyncio.StreamReader, timeout_s: float) -> tuple[int, int]:
    """(remaining length, reason code) of the broker's CONNACK."""
    head = await asyncio.wait_for(reader.readexactly(1), timeout_s)
    if head[0] >> 4 != 2:
        raise ValueError(f"packet type {head[0] >> 4} instead of CONNACK")
    length = shift = 0
    while True:
        byte = (await asyncio.wait_for(reader.readexactly(1), timeout_s))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    body = await asyncio.wait_for(reader.readexactly(length), timeout_s)
    if length < 2:
        raise ValueError("CONNACK too short")
    return length, body[1]


def _judge_mqtt(subject: str, length: int, code: int) -> Check:
    if length == 2 and code == 0x01:  # an MQTT 3.1.1 CONNACK: "unacceptable protocol version"
        return _fail(subject, "the broker speaks only MQTT 3.1.1", MQTT_REFUSALS[0x84][1])
    if code == 0x00:
        return _ok(subject, "the broker accepted the login")
    if code in MQTT_REFUSALS:
        detail, fix = MQTT_REFUSALS[code]
        return _fail(subject, f"{detail} (reason 0x{code:02x})", fix)
    return _warn(subject, f"the broker refused with reason 0x{code:02x}", "ask the broker's operator")


async def check_mqtt_uplink(up: MqttUplinkConfig, gateway_id: str, who: Identity, timeout_s: float) -> list[Check]:
    """The key, certificate and password files, then DNS, TCP, TLS, and an MQTT 5 login."""
    name = f"upstream {up.name}"
    checks: list[Check] = []
    password = None
    files = [("CA file", up.ca_file, False), ("certificate", up.cert_file, False), ("key", up.key_file, False)]
    for label, path, secret in [*files, ("password file", up.password_file, True)]:
        if path is None:
            continue
        check, text = _check_file(f"{name} {label} {path}", path, who, secret=secret)
        checks.append(check)
        if check.status is Status.FAIL:
            return checks
        if secret:
            password = text
    tls = None
    if up.tls:
        try:
            tls = ssl.create_default_context(cafile=str(up.ca_file) if up.ca_file else None)
            if up.cert_file is not None and up.key_file is not None:
                tls.load_cert_chain(up.cert_file, up.key_file)
        except (OSError, ssl.SSLError) as exc:
            fix = "check that ca_file, cert_file and key_file are PEM files that belong together"
            return [*checks, _fail(f"{name} TLS files", f"cannot load: {_reason(exc, timeout_s)}", fix)]
    found, link = await _reach(name, up.host, up.port, tls, timeout_s, "host and port")
    checks += found
    if link is None:
        return checks
    reader, writer = link
    subject = f"{name} auth"
    try:
        writer.write(mqtt_connect_packet(f"edgeagent-doctor-{os.getpid()}", up.username, password))
        await asyncio.wait_for(writer.drain(), timeout_s)
        length, code = await _read_connack(reader, timeout_s)
        if code == 0x00:
            writer.write(b"\xe0\x00")  # DISCONNECT, normal
    except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError, ValueError) as exc:
        detail = (
            "the broker closed the connection"
            if isinstance(exc, asyncio.IncompleteReadError)
            else _reason(exc, timeout_s)
        )
        fix = "check that host and port are an MQTT 5 broker (8883 with TLS, 1883 without)"
        return [*checks, _fail(subject, f"no MQTT answer: {detail}", fix)]
    finally:
        await _close(writer)
    return [*checks, _judge_mqtt(subject, length, code)]


async def check_uplink(up: Any, gateway_id: str, who: Identity, timeout_s: float) -> list[Check]:
    if isinstance(up, HttpUplinkConfig):
        return await check_http_uplink(up, gateway_id, who, timeout_s)
    if isinstance(up, MqttUplinkConfig):
        return await check_mqtt_uplink(up, gateway_id, who, timeout_s)
    kind = getattr(up, "kind", type(up).__name__)
    return [_warn(f"upstream {up.name}", f"the doctor cannot check kind {kind!r} yet", "check it by hand")]


# --- the status page ------------------------------------------------------------------


def check_status_page(site: SiteConfig, config_path: Path) -> list[Check]:
    """How the page is reached (certificate fingerprint, or a plain-HTTP warning) and whether anyone can log in."""
    from edgeagent.web.auth import read_users, users_path
    from edgeagent.web.tls import certificate_paths, fingerprint, plain_off_loopback, wants_tls

    web = site.web
    if not web.enabled:
        return []
    subject = f"status page on {web.host}:{web.port}"
    checks = []
    if wants_tls(web):
        cert, _ = certificate_paths(web, site.gateway.state_dir)
        try:
            checks.append(_ok(subject, f"HTTPS; certificate SHA-256 fingerprint {fingerprint(cert)}"))
        except (OSError, ValueError):
            made = "the agent generates a self-signed one at its first start" if web.tls_cert_file is None else ""
            detail = f"HTTPS, but no certificate at {cert} yet{': ' + made if made else ''}"
            checks.append(_warn(subject, detail, "start the agent once, then run edgeagent doctor again"))
    elif plain_off_loopback(web):
        checks.append(
            _warn(
                subject,
                "plain HTTP off loopback (plain_http_off_loopback = true): passwords and sessions cross the "
                "network readable by anyone on it",
                "drop plain_http_off_loopback (a certificate is then generated), or set tls_cert_file and tls_key_file",
            )
        )
    else:
        checks.append(_ok(subject, "plain HTTP on loopback only"))
    users_file = users_path(web.users_file, site.gateway.state_dir)
    try:
        users = read_users(users_file)
    except OSError as exc:
        return [*checks, _fail("status page users", f"cannot read {users_file}: {exc.strerror}", "check its owner")]
    if users:
        checks.append(_ok("status page users", f"{len(users)} in {users_file}"))
    else:
        fix = f"edgeagent passwd --config {config_path} NAME --role technician"
        checks.append(_warn("status page users", "no user can log in yet", fix))
    return checks


# --- the whole run ----------------------------------------------------------------------


async def _gather(jobs: list[Awaitable[list[Check]]]) -> list[Check]:
    results = await asyncio.gather(*jobs)
    return [check for checks in results for check in checks]


async def diagnose(
    path: Path,
    *,
    service_user: str = SERVICE_USER,
    timeout_s: float = NET_TIMEOUT_S,
    emit: Callable[[Check], None] = lambda c: print(c.line(), flush=True),
) -> tuple[list[Check], bool]:
    """Run every check, emitting each line as its section finishes; return them and config validity."""
    checks: list[Check] = []

    def report(found: Iterable[Check]) -> None:
        for check in found:
            checks.append(check)
            emit(check)

    found, site = check_config(path)
    report(found)
    found, who = check_service_user(service_user)
    report(found)
    if site is not None:
        report(check_config_readable(path, who))
        report(check_serial_ports(serial_ports(site), who))
    ble_buses = [b for b in site.buses if getattr(b, "kind", "") == "ble"] if site is not None else []
    wanted = {str(b.adapter) for b in ble_buses if getattr(b, "adapter", None)}
    report(await check_bluetooth(who, timeout_s, needed=bool(ble_buses), adapters=wanted))
    if site is not None:
        report(check_store(site.gateway.state_dir, who))
        report(check_status_page(site, path))
    report(check_clock())
    if site is not None:
        jobs: list[Awaitable[list[Check]]] = [
            check_modbus_bus(bus, timeout_s) for bus in site.buses if isinstance(bus, ModbusTcpBus)
        ]
        jobs += [check_uplink(up, site.gateway.id, who, timeout_s) for up in site.uplinks]
        report(await _gather(jobs))
    return checks, site is not None


def run_doctor(path: Path) -> int:
    """``edgeagent doctor``: 0 all good (warnings allowed), 1 a check failed, 2 the config is invalid."""
    checks, config_valid = asyncio.run(diagnose(path))
    failed = sum(1 for c in checks if c.status is Status.FAIL)
    warned = sum(1 for c in checks if c.status is Status.WARN)
    print(f"{len(checks)} checks: {failed} failed, {warned} warnings")
    if not config_valid:
        return 2
    return 1 if failed else 0
