"""The ``edgeagent`` command line.

Exit codes: 0 success, 1 a runtime failure, 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from edgeagent import __version__
from edgeagent.errors import ConfigError, DecodeError, DeviceError, EdgeAgentError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = logging.getLogger("edgeagent")


def _cmd_check_config(args: argparse.Namespace) -> int:
    from edgeagent.config import load_config

    try:
        load_config(Path(args.file))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    print("OK")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from edgeagent.agent import Agent, install_signal_handlers
    from edgeagent.config import load_config
    from edgeagent.logs import setup_logging

    setup_logging(args.log_level)
    try:
        site = load_config(Path(args.config))
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config: %s", problem)
        return EXIT_CONFIG

    async def main() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        await Agent(site).run(stop)

    try:
        asyncio.run(main())
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


def _cmd_read(args: argparse.Namespace) -> int:
    """One poll of one device, printed with units: the technician's first check."""
    from edgeagent.config import load_config, profiles_for
    from edgeagent.devices import ModbusDevice
    from edgeagent.transports.modbus import ModbusTcpTransport

    try:
        site = load_config(Path(args.config))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    devices = {d.id: d for d in site.devices}
    if args.device not in devices:
        print(f"no device {args.device!r}; known: {', '.join(devices) or 'none'}", file=sys.stderr)
        return EXIT_CONFIG
    cfg = devices[args.device]
    bus = next(b for b in site.buses if b.name == cfg.bus)
    device = ModbusDevice(cfg, profiles_for(site)[cfg.profile])

    async def once() -> int:
        transport = ModbusTcpTransport(bus.host, bus.port, timeout_s=bus.timeout_ms / 1000)
        try:
            answers = [
                (span, await transport.read(span.function, span.start, span.count, device.unit_id))
                for span in device.spans
            ]
            readings = device.decode(answers, time.time())
        except (DeviceError, DecodeError) as exc:
            print(f"{device.id}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            await transport.close()
        for r in readings:
            print(f"{r.device} {r.point} = {r.value} {r.unit}")
        return EXIT_OK

    return asyncio.run(once())


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

    p = sub.add_parser("read", help="poll one device once and print its values")
    p.add_argument("--config", required=True)
    p.add_argument("device")
    p.set_defaults(func=_cmd_read)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
