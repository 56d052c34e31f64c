"""From a verified payload to the config a gateway would run, checked exactly as check-config checks a file.

The running config is the payload plus the local bootstrap: ``[gateway]`` (id and state
folder) and ``[fleet]`` always come from the local file. A payload that carries
``[fleet]``, or a ``[gateway]`` that differs from the local one, tries to change the
bootstrap and is refused (``schema``). Relative paths in a payload are taken relative
to the local config's folder, as if the payload had been written there.

The decision uses the very functions ``check-config`` and a reload use
(``parse_config`` + ``preflight.check_site``); only the reason code is worked out
afterwards: a problem under ``rules`` is ``rule``; one the schema alone finds
(types, unknown keys, missing keys) is ``schema``; what remains (a device on a bus
that is not there, an unknown profile, a duplicate, an unreadable token file) is
``reference``. The dry run then checks what validation cannot: each bus that would be
started can be (its port or adapter is there), its devices can be built, rules compile.
"""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path

from pydantic import ValidationError

from edgeagent.config import (
    BleBus,
    ModbusRtuBus,
    ModbusTcpBus,
    SerialBus,
    SiteConfig,
    parse_config,
    profiles_for,
)
from edgeagent.errors import ConfigError, ConfigProblem, EdgeAgentError
from edgeagent.fleet.bundle import DRY_RUN, REFERENCE, RULE, SCHEMA, Rejected
from edgeagent.fleet.settings import FleetConfig
from edgeagent.fleet.slots import Slots
from edgeagent.fleet.trust import TrustError, read_trust_file

log = logging.getLogger(__name__)

FLEET_DIR = "fleet"
MAX_PROBLEMS_SHOWN = 5
BLUETOOTH_ADAPTERS = Path("/sys/class/bluetooth")


def slots_of(site: SiteConfig) -> Slots:
    return Slots(site.gateway.state_dir / FLEET_DIR)


def _problems_text(problems: list[ConfigProblem]) -> str:
    shown = "; ".join(f"{p.path}: {p.message}" if p.path else p.message for p in problems[:MAX_PROBLEMS_SHOWN])
    more = len(problems) - MAX_PROBLEMS_SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


def _bootstrap_gateway(data: dict[str, object], local: SiteConfig, base: Path) -> dict[str, object]:
    """The ``[gateway]`` a payload runs with: its own keys, the local id and state folder.

    A payload may leave ``[gateway]`` out (the local one is used) or repeat the local id
    and state folder; any other id or folder is an attempt to change the bootstrap.
    """
    if "fleet" in data:
        raise Rejected(
            SCHEMA,
            "fleet: the [fleet] section is the local bootstrap (trust, channels, credentials): no bundle carries it",
        )
    bootstrap = {"id": local.gateway.id, "state_dir": str(local.gateway.state_dir)}
    pushed = data.get("gateway")
    if pushed is None:
        return local.gateway.model_dump(mode="json")
    if not isinstance(pushed, dict):
        raise Rejected(SCHEMA, "gateway: expected a table")
    if "id" in pushed and pushed["id"] != local.gateway.id:
        raise Rejected(
            SCHEMA,
            f"gateway.id: {pushed['id']!r} is not this gateway ({local.gateway.id!r}): the id is the local bootstrap",
        )
    if "state_dir" in pushed:
        where = pushed["state_dir"]
        if not isinstance(where, str) or (base / where).resolve() != local.gateway.state_dir:
            raise Rejected(
                SCHEMA, "gateway.state_dir: the state folder is the local bootstrap: a bundle cannot move it"
            )
    return {**pushed, **bootstrap}


def _code_of(problems: list[ConfigProblem], data: dict[str, object]) -> str:
    if any(p.path == "rules" or p.path.startswith(("rules[", "rules.")) for p in problems):
        return RULE
    try:
        SiteConfig.model_validate(data)
    except ValidationError:
        return SCHEMA
    return REFERENCE


def compose(local: SiteConfig, payload: bytes, config_path: Path) -> SiteConfig:
    """The site a payload makes with this gateway's bootstrap; Rejected with schema, reference or rule.

    The payload is read as if written in the local file (its folder for relative paths,
    its name in problems found later), so a device or uplink the push left as it was
    compares equal to the running one and keeps running.
    """
    base, file = config_path.resolve().parent, str(config_path)
    from edgeagent.preflight import check_site

    try:
        data = tomllib.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise Rejected(SCHEMA, f"the payload is not UTF-8 text (byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise Rejected(SCHEMA, f"the payload is not TOML: {exc}") from exc
    merged = {**data, "gateway": _bootstrap_gateway(data, local, base)}
    try:
        site = parse_config(merged, file=file, base=base).model_copy(update={"fleet": local.fleet})
        check_site(site)
    except ConfigError as exc:
        raise Rejected(_code_of(exc.problems, merged), _problems_text(exc.problems)) from exc
    return site


def compose_for_reload(local: SiteConfig, payload: bytes | None, config_path: Path) -> SiteConfig:
    """SIGHUP while a pushed config runs: the new local bootstrap with the running payload."""
    if payload is None or local.fleet is None:
        return local
    log.info("fleet: a pushed config runs: only [gateway] and [fleet] are taken from %s", config_path)
    try:
        return compose(local, payload, config_path)
    except Rejected as exc:
        raise ConfigError([ConfigProblem("", "", f"the running fleet config with this file: {exc}")]) from exc


def dry_run(site: SiteConfig, buses_started: list[str]) -> None:
    """What validation cannot see: the buses that would start exist here, their devices build, rules compile."""
    from edgeagent.devices.build import polled_devices

    profiles = profiles_for(site)
    for i, bus in enumerate(site.buses):
        if bus.name not in buses_started:
            continue
        missing = _missing_hardware(bus)
        if missing is not None:
            raise Rejected(DRY_RUN, f"buses[{i}] ({bus.name}): {missing}")
        configs = [d for d in site.devices if d.bus == bus.name]
        if isinstance(bus, ModbusTcpBus | ModbusRtuBus) or (isinstance(bus, SerialBus) and configs):
            try:
                polled_devices(bus, configs, profiles)
            except (EdgeAgentError, ValueError, KeyError) as exc:
                raise Rejected(DRY_RUN, f"buses[{i}] ({bus.name}): its devices cannot be built: {exc}") from exc
    _compile_rules(site)


def _missing_hardware(bus: object) -> str | None:
    if isinstance(bus, ModbusRtuBus | SerialBus) and "://" not in bus.port and not os.path.exists(bus.port):
        return f"serial port {bus.port} does not exist on this gateway"
    if isinstance(bus, BleBus) and bus.adapter is not None and not (BLUETOOTH_ADAPTERS / bus.adapter).exists():
        return f"Bluetooth adapter {bus.adapter} does not exist on this gateway"
    return None


def _compile_rules(site: SiteConfig) -> None:
    """Rules compile as part of the config's validation (``[[rules]]``); a site without them has none."""
    rules = getattr(site, "rules", None)
    if not rules:
        return
    try:
        from edgeagent.rules import compile_rules  # type: ignore[attr-defined]
    except ImportError:
        return  # this build validates rules in parse_config only
    try:
        compile_rules(site)
    except (EdgeAgentError, ValueError) as exc:
        raise Rejected(RULE, f"rules do not compile: {exc}") from exc


def boot_site(local: SiteConfig, config_path: Path) -> tuple[SiteConfig, int | None]:
    """What a start runs: the last committed fleet config with this bootstrap, else the local file.

    A pending marker (an apply that never finished) changes nothing here: last-good was
    never rewritten by it. If last-good no longer validates with this build (a profile
    gone from an upgrade, say), the local file runs and the log says why.
    """
    if local.fleet is None:
        return local, None
    slot = slots_of(local).last_good()
    if slot is None:
        return local, None
    try:
        site = compose(local, slot.payload, config_path)
    except Rejected as exc:
        log.error(
            "fleet: the last good config (version %d) is not valid here (%s); running the local file", slot.version, exc
        )
        return local, None
    return site, slot.version


def fleet_problems(fleet: FleetConfig) -> list[ConfigProblem]:
    """What ``run`` needs of the files ``[fleet]`` names (preflight calls this for check-config and run)."""
    from edgeagent.preflight import mqtt_tls_context, read_secret

    problems: list[ConfigProblem] = []
    try:
        read_trust_file(fleet.trust_file)
    except TrustError as exc:
        problems.append(fleet.problem("trust_file", str(exc)))
    checks: list[tuple[object, str | None]] = []
    if fleet.mqtt is not None:
        if fleet.mqtt.password_file is not None:
            checks.append((fleet.mqtt, "password_file"))
        if fleet.mqtt.tls:
            checks.append((fleet.mqtt, None))
    if fleet.http is not None and fleet.http.token_file is not None:
        checks.append((fleet.http, "token_file"))
    for part, key in checks:
        try:
            if key is None:
                mqtt_tls_context(part)  # type: ignore[arg-type]
            else:
                read_secret(part, key)  # type: ignore[arg-type]
        except ConfigError as exc:
            problems += exc.problems
    return problems
