"""``edgeagent fleet ...``: the integrator's side of a push.

    keygen --out DIR                      DIR/signing.key (0600) and DIR/signing.pub
    trust --pub PUB ... --out TRUST       a trust file (threshold, epoch)
    sign CONFIG --key KEY ... --version N --gateway/--group ... --out BUNDLE
    verify BUNDLE --trust TRUST           exit 0, or 1 with the reason code
    push BUNDLE --mqtt URL                retained, to each target's topic
    status --mqtt URL [--group TAG]       every reporting gateway, and a summary line

``--mqtt`` takes ``mqtt://[user[:password]@]host[:port][/topic_prefix]`` (``mqtts://``
for TLS; the prefix defaults to ``edgeagent``). Exit codes: 0 success, 1 a refusal or
a runtime failure (``status``: some gateway failed), 2 usage, 3 (``status``) some
gateway has not decided yet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from edgeagent.fleet.bundle import Rejected, payload_of, read_bundle, sign_bundle, verify
from edgeagent.fleet.trust import (
    Trust,
    TrustError,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    parse_trust,
    read_trust_file,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_PENDING = 0, 1, 2, 3
DAY_S = 86_400
QUIET_S = 0.5  # status: retained messages come right after the subscription; this long with none means all came


def add_fleet_parser(sub: Any) -> None:
    p = sub.add_parser("fleet", help="sign, verify, push and watch fleet config bundles")
    fleet = p.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")

    q = fleet.add_parser("keygen", help="a new Ed25519 signing key: DIR/signing.key (0600) and DIR/signing.pub")
    q.add_argument("--out", required=True, type=Path, metavar="DIR")
    q.set_defaults(func=_keygen)

    q = fleet.add_parser("trust", help="write a trust file from public keys")
    q.add_argument("--pub", required=True, action="append", type=Path, metavar="PUB")
    q.add_argument("--threshold", type=int, default=1, help="signatures a bundle needs (default 1)")
    q.add_argument("--epoch", type=int, default=1, help="key epoch; a trust bundle must raise it (default 1)")
    q.add_argument("--out", required=True, type=Path, metavar="TRUST")
    q.set_defaults(func=_trust)

    q = fleet.add_parser("sign", help="sign a site config (or a trust file) into a bundle")
    q.add_argument("config", type=Path, metavar="CONFIG", help="a site config (TOML) or a trust file (JSON)")
    q.add_argument("--key", required=True, action="append", type=Path, metavar="KEY")
    q.add_argument("--version", required=True, type=int, help="higher than every version pushed before")
    q.add_argument("--gateway", action="append", default=[], metavar="ID")
    q.add_argument("--group", action="append", default=[], metavar="TAG")
    q.add_argument("--expires-in-days", type=float, metavar="D")
    q.add_argument("--out", required=True, type=Path, metavar="BUNDLE")
    q.set_defaults(func=_sign)

    q = fleet.add_parser("verify", help="check a bundle's signatures against a trust file (exit 0, or 1 and why)")
    q.add_argument("bundle", type=Path, metavar="BUNDLE")
    q.add_argument("--trust", required=True, type=Path, metavar="TRUST")
    q.set_defaults(func=_verify)

    q = fleet.add_parser("push", help="publish a bundle, retained, to its targets' topics")
    q.add_argument("bundle", type=Path, metavar="BUNDLE")
    _broker_args(q)
    q.set_defaults(func=_push)

    q = fleet.add_parser("status", help="every reporting gateway's running version and last outcome")
    _broker_args(q)
    q.add_argument("--group", metavar="TAG", help="only this group, judged against its pushed version")
    q.add_argument("--wait-s", type=float, default=5.0, help="longest wait for the reports (default 5)")
    q.set_defaults(func=_status)


def _broker_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--mqtt", required=True, metavar="URL", help="mqtt[s]://[user[:password]@]host[:port][/prefix]")
    q.add_argument("--ca-file", type=Path, help="CA bundle for mqtts:// (default: system CAs)")


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(message, file=sys.stderr)
    return code


# -- keys, trust, signing ------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    private, public = generate_key()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(out / "signing.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _fail(f"{out / 'signing.key'} exists: not overwritten", EXIT_USAGE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    (out / "signing.pub").write_bytes(public)
    print(
        f"key {key_id(load_public_key(out / 'signing.pub'))}: {out / 'signing.key'} (keep it offline), "
        f"{out / 'signing.pub'}"
    )
    return EXIT_OK


def _trust(args: argparse.Namespace) -> int:
    try:
        keys = {key_id(raw): raw for raw in (load_public_key(p) for p in args.pub)}
        trust = parse_trust(Trust(args.epoch, args.threshold, keys).to_json())
    except TrustError as exc:
        return _fail(str(exc), EXIT_USAGE)
    args.out.write_bytes(trust.to_json())
    print(f"{args.out}: epoch {trust.epoch}, {trust.threshold} of {len(trust.keys)} keys: {', '.join(trust.keys)}")
    return EXIT_OK


def _payload(path: Path, version: int) -> tuple[str, bytes] | str:
    """(kind, payload) of the file to sign, or what is wrong with it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    if data.lstrip().startswith(b"{"):
        try:
            trust = parse_trust(data)
        except TrustError as exc:
            return f"{path}: not a trust file: {exc}"
        if trust.epoch != version:
            return f"{path}: a trust bundle's version is its epoch ({trust.epoch}), not {version}"
        return "trust", data
    problems = _check_config(path, data)
    return problems or ("config", data)


def _check_config(path: Path, data: bytes) -> str | None:
    """The payload validated as a gateway would (with a stand-in [gateway]); None when valid."""
    import tomllib

    from edgeagent.config import parse_config
    from edgeagent.errors import ConfigError

    try:
        doc = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return f"{path}: not a TOML config: {exc}"
    if "fleet" in doc:
        return f"{path}: fleet: the [fleet] section is each gateway's local bootstrap; a bundle cannot carry it"
    doc.setdefault("gateway", {"id": "gw-check", "state_dir": "/nonexistent"})
    try:
        parse_config(doc, file=str(path), base=path.resolve().parent)
    except ConfigError as exc:
        return "\n".join(str(p) for p in exc.problems)
    return None


def _sign(args: argparse.Namespace) -> int:
    if not args.gateway and not args.group:
        return _fail("name at least one target: --gateway ID or --group TAG", EXIT_USAGE)
    found = _payload(args.config, args.version)
    if isinstance(found, str):
        return _fail(found, EXIT_USAGE)
    kind, payload = found
    try:
        keys = [load_private_key(k) for k in args.key]
    except TrustError as exc:
        return _fail(str(exc), EXIT_USAGE)
    now = int(time.time())
    expires = None if args.expires_in_days is None else now + int(args.expires_in_days * DAY_S)
    try:
        raw = sign_bundle(
            payload,
            kind=kind,
            version=args.version,
            keys=keys,
            issued_at=now,
            gateways=args.gateway,
            groups=args.group,
            expires_at=expires,
        )
    except ValueError as exc:
        return _fail(f"cannot sign: {exc}", EXIT_USAGE)
    bundle = read_bundle(raw)  # the size limit, as a gateway applies it
    args.out.write_bytes(raw)
    print(
        f"{args.out}: {kind} version {args.version} for {bundle.describe_targets()}, {len(raw)} bytes, "
        f"signed by {', '.join(k for k, _ in bundle.signatures)}"
    )
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    try:
        trust = read_trust_file(args.trust)
        raw = args.bundle.read_bytes()
    except (TrustError, OSError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        bundle = read_bundle(raw)
        signers = verify(bundle, trust)
        payload_of(bundle)
        if bundle.expires_at is not None and bundle.expires_at < time.time():
            raise Rejected(
                "expired", f"expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(bundle.expires_at))}"
            )
    except Rejected as exc:
        print(f"rejected: {exc.code}: {exc.reason}")
        return EXIT_FAILURE
    print(
        f"OK: {bundle.kind} version {bundle.version} for {bundle.describe_targets()}; "
        f"signed by {', '.join(signers)} ({len(signers)} of {trust.threshold} needed)"
    )
    return EXIT_OK


# -- the broker ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Broker:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None
    prefix: str


def parse_broker(url: str) -> Broker:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"not an mqtt:// or mqtts:// URL: {url!r}")
    tls = parts.scheme == "mqtts"
    prefix = parts.path.strip("/") or "edgeagent"
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return Broker(parts.hostname, parts.port or (8883 if tls else 1883), tls, user, password, prefix)


def _client(broker: Broker, ca_file: Path | None) -> Any:
    import aiomqtt

    tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None) if broker.tls else None
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username,
        password=broker.password,
        identifier=f"edgeagent-fleet-tool-{uuid.uuid4().hex[:12]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=tls,
        timeout=10,
    )


def topics_for(bundle_kind: str, prefix: str, gateways: tuple[str, ...], groups: tuple[str, ...]) -> list[str]:
    leaf = "bundle" if bundle_kind == "config" else "trust"
    return [f"{prefix}/{g}/config/{leaf}" for g in gateways] + [f"{prefix}/groups/{g}/config/{leaf}" for g in groups]


def _push(args: argparse.Namespace) -> int:
    import aiomqtt

    try:
        broker = parse_broker(args.mqtt)
        raw = args.bundle.read_bytes()
        bundle = read_bundle(raw)
    except (ValueError, OSError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except Rejected as exc:
        return _fail(f"not a bundle to push: {exc}", EXIT_USAGE)
    topics = topics_for(bundle.kind, broker.prefix, bundle.gateways, bundle.groups)

    async def publish() -> None:
        async with _client(broker, args.ca_file) as client:
            for topic in topics:
                await client.publish(topic, raw, qos=1, retain=True, timeout=30)
                print(f"{topic}: {bundle.kind} version {bundle.version} ({len(raw)} bytes, retained)")

    try:
        asyncio.run(publish())
    except aiomqtt.MqttError as exc:
        return _fail(f"{broker.host}:{broker.port}: {exc}")
    return EXIT_OK


async def collect(
    broker: Broker, ca_file: Path | None, group: str | None, wait_s: float
) -> tuple[dict[str, dict[str, Any]], int | None]:
    """Every retained report under the prefix (gateway -> report), and the group's pushed version."""
    reports: dict[str, dict[str, Any]] = {}
    target: int | None = None
    group_topic = f"{broker.prefix}/groups/{group}/config/bundle" if group else None
    async with _client(broker, ca_file) as client:
        await client.subscribe(f"{broker.prefix}/+/config/reported", qos=1)
        if group_topic:
            await client.subscribe(group_topic, qos=1)
        deadline = time.monotonic() + wait_s
        messages = aiter(client.messages)
        while time.monotonic() < deadline:
            try:
                message = await asyncio.wait_for(anext(messages), min(QUIET_S, deadline - time.monotonic()))
            except TimeoutError:
                break
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if not payload:
                continue
            if str(message.topic) == group_topic:
                try:
                    target = read_bundle(payload).version
                except Rejected:
                    target = None
                continue
            try:
                doc = json.loads(payload)
            except ValueError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("gateway"), str):
                reports[doc["gateway"]] = doc
    return reports, target


def judge(report: dict[str, Any], target: int | None) -> str:
    """applied, pending or failed: against the group's pushed version when known, else by the last
    outcome (``local``: never took a push, it runs its local file)."""
    last = report.get("last") or {}
    running = report.get("running_version") or 0
    outcome = last.get("outcome")
    if target is not None:
        if running >= target:
            return "applied"
        if last.get("version") == target and outcome in ("rejected", "rolled_back"):
            return "failed"
        return "pending"
    if outcome in ("rejected", "rolled_back"):
        return "failed"
    if outcome == "applying":
        return "pending"
    return "applied" if outcome == "applied" or running else "local"


def _status(args: argparse.Namespace) -> int:
    import aiomqtt

    try:
        broker = parse_broker(args.mqtt)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        reports, target = asyncio.run(collect(broker, args.ca_file, args.group, args.wait_s))
    except aiomqtt.MqttError as exc:
        return _fail(f"{broker.host}:{broker.port}: {exc}")
    if args.group:
        reports = {g: r for g, r in reports.items() if args.group in (r.get("groups") or [])}
    rows = [("GATEWAY", "VERSION", "STATE", "LAST OUTCOME", "REASON")]
    counts = {"applied": 0, "pending": 0, "failed": 0, "local": 0}
    for gateway in sorted(reports):
        r = reports[gateway]
        state = judge(r, target)
        counts[state] += 1
        last = r.get("last") or {}
        outcome = last.get("outcome", "-")
        if last.get("code"):
            outcome += f": {last['code']}"
        if last.get("version") is not None:
            outcome += f" (v{last['version']})"
        rows.append((gateway, str(r.get("running_version", 0)), state, outcome, str(last.get("reason", ""))[:80]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    of = f" of group {args.group} (pushed version {target if target is not None else 'unknown'})" if args.group else ""
    local = f", {counts['local']} on their local config" if counts["local"] else ""
    print(
        f"{counts['applied']} applied, {counts['pending']} pending, {counts['failed']} failed{local}; "
        f"{len(reports)} gateways reporting{of}"
    )
    if counts["failed"]:
        return EXIT_FAILURE
    return EXIT_PENDING if counts["pending"] else EXIT_OK


__all__ = ["add_fleet_parser", "collect", "judge", "parse_broker", "topics_for"]
