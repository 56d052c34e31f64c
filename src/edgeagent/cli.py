"""The ``edgeagent`` command line.

Exit codes: 0 success, 1 a runtime failure, 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeagent import __version__
from edgeagent.errors import ConfigError, DeviceError, EdgeAgentError, InvalidWrite

if TYPE_CHECKING:
    from edgeagent.config import SiteConfig
    from edgeagent.devices.tools import Advertiser

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = logging.getLogger("edgeagent")


def load_for_run(path: str) -> SiteConfig:
    """A config as ``run`` takes it: valid, and every file, folder and port it names usable.

    ``check-config`` and a reload (SIGHUP) call this too, so they cannot disagree about a config.
    """
    from edgeagent.config import load_config
    from edgeagent.preflight import check_site

    site = load_config(Path(path))
    check_site(site)
    return site


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        load_for_run(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    print("OK")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    return run_agent(args.config, args.log_level)


def run_agent(config: str, log_level: str, **options: Any) -> int:
    """``edgeagent run``; ``options`` go to the Agent (a test fills a seam, e.g. ``fleet_clock``)."""
    from edgeagent.agent import Agent, install_signal_handlers
    from edgeagent.logs import setup_logging

    setup_logging(log_level)
    try:
        site = load_for_run(config)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config: %s", problem)
        return EXIT_CONFIG
    fleet_version = None
    if site.fleet is not None:  # the last committed fleet config runs, if there is one
        from edgeagent.fleet.compose import boot_site

        site, fleet_version = boot_site(site, Path(config))

    async def main() -> None:
        stop = asyncio.Event()
        agent = Agent(site, config_path=Path(config), fleet_version=fleet_version, **options)
        install_signal_handlers(stop, agent)
        await agent.run(stop)

    try:
        asyncio.run(main())
    except ConfigError as exc:
        # A file that changed since the check (an unreadable secret, say): a restart would not help.
        for problem in exc.problems:
            log.error("config: %s", problem)
        return EXIT_CONFIG
    except EdgeAgentError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from edgeagent.logs import setup_logging
    from edgeagent.sim.demo import run_demo

    setup_logging(args.log_level)
    state_dir = Path(args.state_dir) if args.state_dir else None
    try:
        return asyncio.run(run_demo(web_port=args.port, state_dir=state_dir, duration_s=args.duration_s))
    except EdgeAgentError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE


def _cmd_profiles(args: argparse.Namespace) -> int:
    from edgeagent.profiles import available_profiles, load_profile

    for name in available_profiles():
        try:
            p = load_profile(name)
        except ConfigError as exc:
            print(f"{name}: INVALID: {exc}")
            continue
        points = ", ".join(f"{pt.name} [{pt.unit}]" for pt in p.points)
        print(f"{name}: {p.manufacturer} {p.model} ({p.protocol}): {points}")
    return EXIT_OK


def _quiet_logging() -> None:
    """Warnings only: the tools print their own results (and libraries' chatter is not for technicians)."""
    from edgeagent.logs import setup_logging

    setup_logging("WARNING")


def _load_site(path: str) -> SiteConfig | None:
    from edgeagent.config import load_config

    try:
        return load_config(Path(path))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _shown(value: float | None, unit: str, label: str | None, quality: str) -> str:
    if value is None:
        return f"– {unit} ({quality})"
    text = f"{value:g} {unit}"
    if label:
        text += f" ({label})"
    if quality != "good":
        text += f" [{quality}]"
    return text


def _cmd_read(args: argparse.Namespace) -> int:
    """One poll (or first advertisement or frame) of one device, printed with units."""
    _quiet_logging()
    from edgeagent.devices.tools import read_device

    site = _load_site(args.config)
    if site is None:
        return EXIT_CONFIG
    try:
        result = asyncio.run(read_device(site, args.device, timeout_s=args.timeout_s))
    except ConfigError as exc:  # an unknown device id
        print("; ".join(p.message for p in exc.problems), file=sys.stderr)
        return EXIT_CONFIG
    except DeviceError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILURE
    for r in result.readings:
        pv = result.points.get(r.point)
        label = pv.label if pv is not None else None
        print(f"{r.device} {r.point} = {_shown(r.value, r.unit, label, r.quality.name.lower())}")
    return EXIT_OK


def _cmd_write(args: argparse.Namespace) -> int:
    """Write one point of a Modbus device, after confirmation, and read it back."""
    _quiet_logging()
    from edgeagent.devices.tools import write_device

    site = _load_site(args.config)
    if site is None:
        return EXIT_CONFIG

    def confirm(question: str) -> bool:
        if args.yes:
            print(question.rstrip("?"))
            return True
        print(f"{question} [y/N] ", end="", flush=True)
        answer = sys.stdin.readline().strip().lower()
        return answer in ("y", "yes")

    try:
        shown, read_back = asyncio.run(write_device(site, args.device, args.point, args.value, confirm=confirm))
    except ConfigError as exc:  # an unknown device id
        print("; ".join(p.message for p in exc.problems), file=sys.stderr)
        return EXIT_CONFIG
    except InvalidWrite as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except DeviceError as exc:
        print(f"{args.device}: write failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {shown}")
    if read_back is None:
        print("the device was not read back afterwards", file=sys.stderr)
    else:
        back = _shown(read_back.value, read_back.unit, read_back.label, read_back.quality.name.lower())
        print(f"read back: {args.device} {args.point} = {back}")
    return EXIT_OK


def _unit_range(text: str) -> list[int]:
    units: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            units.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"unit ids like 1-247 or 1,5,9-12, not {text!r}") from None
    if not units or min(units) < 1 or max(units) > 247:
        raise argparse.ArgumentTypeError("unit ids are 1-247")
    return units


def _cmd_scan_modbus(args: argparse.Namespace) -> int:
    """Which unit ids answer on an RS-485 line."""
    _quiet_logging()
    from edgeagent.devices.tools import UnitAnswer, scan_modbus

    units: list[int] = args.units
    print(
        f"scanning {args.port} at {args.baud} {args.bytesize}{args.parity}{args.stopbits}, "
        f"{len(units)} unit ids, {args.timeout_ms} ms each",
        flush=True,
    )

    def found(answer: UnitAnswer) -> None:
        note = f" (answered {answer.note})" if answer.note else ""
        print(f"unit {answer.unit_id}: present{note}", flush=True)

    try:
        answers = asyncio.run(
            scan_modbus(
                args.port,
                baudrate=args.baud,
                bytesize=args.bytesize,
                parity=args.parity,
                stopbits=args.stopbits,
                units=units,
                timeout_s=args.timeout_ms / 1000,
                register=args.register,
                function=args.function,
                on_found=found,
            )
        )
    except DeviceError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILURE
    if not answers:
        print("no unit answered")
        return EXIT_FAILURE
    print(f"found {len(answers)}: {', '.join(str(a.unit_id) for a in answers)}")
    return EXIT_OK


def _cmd_scan_ble(args: argparse.Namespace) -> int:
    """Which BLE senders are in range, with what they say."""
    _quiet_logging()
    from edgeagent.devices.tools import scan_ble

    try:
        heard = asyncio.run(scan_ble(args.seconds, adapter=args.adapter))
    except DeviceError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILURE
    print(format_ble_scan(heard))
    return EXIT_OK


def format_ble_scan(heard: Sequence[Advertiser]) -> str:
    """The table ``scan ble`` prints: address, signal, kind, decoded values."""
    if not heard:
        return "no advertisements heard"
    lines = []
    for a in heard:
        values = ", ".join(f"{k}={v}" for k, v in a.values.items())
        name = f" {a.name!r}" if a.name else ""
        lines.append(f"{a.address} {a.rssi:4d} dBm {a.kind}{name}{': ' + values if values else ''}")
    return "\n".join(lines)


def _cmd_passwd(args: argparse.Namespace) -> int:
    """Set a status page user's password: asked twice on a terminal, else one line read from stdin."""
    import getpass

    from edgeagent.web.auth import set_password, users_path

    site = _load_site(args.config)
    if site is None:
        return EXIT_CONFIG
    path = users_path(site.web.users_file, site.gateway.state_dir)
    if not path.parent.is_dir():
        print(f"{path.parent} does not exist: start the agent once (it makes it), or create it", file=sys.stderr)
        return EXIT_FAILURE
    if sys.stdin.isatty():
        password = getpass.getpass(f"new password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            print("the two passwords differ; nothing changed", file=sys.stderr)
            return EXIT_CONFIG
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        new = set_password(path, args.user, password, args.role)
    except ValueError as exc:
        print(f"{exc}; nothing changed", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{'added' if new else 'changed the password of'} {args.user} ({args.role}) in {path}")
    return EXIT_OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    from edgeagent.doctor import run_doctor

    return run_doctor(Path(args.config))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeagent", description="Field-bus gateway agent for roadside sensors.")
    parser.add_argument("--version", action="version", version=f"edgeagent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the agent as a daemon")
    p.add_argument("--config", required=True, help="site config (TOML)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check-config", help="validate a config file; print OK or every error")
    p.add_argument("file")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("demo", help="run the agent against simulated devices and a local ingest")
    p.add_argument("--port", type=int, default=8080, help="status page port (0: any free port)")
    p.add_argument("--state-dir", help="keep the buffer here (default: a temporary folder)")
    p.add_argument("--duration-s", type=float, help="stop by itself after this long")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("profiles", help="list the shipped device profiles")
    p.set_defaults(func=_cmd_profiles)

    p = sub.add_parser("doctor", help="check what commonly goes wrong at install time, with fixes")
    p.add_argument("--config", default="/etc/edgeagent/edgeagent.toml")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("passwd", help="set a status page user's password (from stdin when it is not a terminal)")
    p.add_argument("--config", required=True)
    p.add_argument("--role", choices=["viewer", "technician"], default="viewer")
    p.add_argument("user")
    p.set_defaults(func=_cmd_passwd)

    p = sub.add_parser("read", help="poll one device once and print its values with units")
    p.add_argument("--config", required=True)
    p.add_argument("--timeout-s", type=float, default=15.0, help="give up after this long")
    p.add_argument("device")
    p.set_defaults(func=_cmd_read)

    p = sub.add_parser("write", help="write one point of a Modbus device (asks first), then read it back")
    p.add_argument("--config", required=True)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("device")
    p.add_argument("point")
    p.add_argument("value", help="a number in the point's unit, on/off for a coil, or an enum label")
    p.set_defaults(func=_cmd_write)

    p = sub.add_parser("scan", help="find devices: unit ids on an RS-485 line, or BLE senders in range")
    scan = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = scan.add_parser("modbus", help="list the unit ids that answer on a serial line")
    q.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    q.add_argument("--baud", type=int, default=9600)
    q.add_argument("--bytesize", type=int, choices=[7, 8], default=8)
    q.add_argument("--parity", choices=["N", "E", "O"], default="N")
    q.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    q.add_argument("--units", type=_unit_range, default=list(range(1, 248)), help="e.g. 1-247 (default) or 1,5,9-12")
    q.add_argument("--timeout-ms", type=int, default=100, help="wait per unit id")
    q.add_argument("--function", choices=["holding", "input", "coil", "discrete"], default="holding")
    q.add_argument("--register", type=int, default=0, help="address asked for (any answer counts)")
    q.set_defaults(func=_cmd_scan_modbus)
    q = scan.add_parser("ble", help="list BLE advertisers with decoded values")
    q.add_argument("--seconds", type=float, default=10.0)
    q.add_argument("--adapter", help="e.g. hci0 (default: the system's)")
    q.set_defaults(func=_cmd_scan_ble)
    from edgeagent.fleet.cli import add_fleet_parser

    add_fleet_parser(sub)
    from edgeagent.rules.cli import add_rules_parsers

    add_rules_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
