"""What the fleet tests share: keys and bundles, gateway configs, a fleet tool's view of the broker, agents.

Everything is real: Ed25519 keys from ``cryptography``, bundles signed as ``edgeagent fleet
sign`` signs them, a real Mosquitto (tests/mosquitto.py), real ``edgeagent run`` processes
whose stderr goes to a file (a long test must not fill a pipe nobody reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.fleet.bundle import sign_bundle
from edgeagent.fleet.trust import Trust, key_id
from edgeagent.sim.ingest import IngestServer
from tests.agentproc import NotifySocket
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "edgeagent"
INTERVAL_S = 0.2


# -- keys and bundles --------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    key: Ed25519PrivateKey

    @property
    def public(self) -> bytes:
        return self.key.public_key().public_bytes_raw()

    @property
    def id(self) -> str:
        return key_id(self.public)


def signers(n: int) -> list[Signer]:
    return [Signer(Ed25519PrivateKey.generate()) for _ in range(n)]


def trust_of(keys: Sequence[Signer], *, threshold: int = 1, epoch: int = 1) -> Trust:
    return Trust(epoch, threshold, {k.id: k.public for k in keys})


def write_trust(path: Path, keys: Sequence[Signer], *, threshold: int = 1, epoch: int = 1) -> Path:
    path.write_bytes(trust_of(keys, threshold=threshold, epoch=epoch).to_json())
    return path


def bundle(
    payload: str | bytes,
    version: int,
    keys: Sequence[Signer],
    *,
    gateways: Sequence[str] = (),
    groups: Sequence[str] = (),
    expires_at: int | None = None,
    kind: str = "config",
) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return sign_bundle(
        data,
        kind=kind,
        version=version,
        keys=[k.key for k in keys],
        issued_at=int(time.time()),
        gateways=gateways,
        groups=groups,
        expires_at=expires_at,
    )


# -- configs ------------------------------------------------------------------------------------


def device(dev_id: str, unit: int, bus: str = "flood", interval_s: float = INTERVAL_S) -> str:
    return f"""
[[devices]]
id = "{dev_id}"
profile = "generic_water_level"
bus = "{bus}"
unit_id = {unit}
poll_interval_s = {interval_s}
backoff_max_s = 1.0
[devices.asset]
location = "test bench"
owner = "tests"
"""


def payload(
    modbus_port: int | None, ingest_url: str | None, devices: str = "", extra: str = "", web: str = "enabled = false"
) -> str:
    """A site config as a bundle carries it: no [gateway], no [fleet]."""
    parts = [f"[store]\ncommit_interval_ms = 100\n\n[web]\n{web}\n"]
    if modbus_port is not None:
        parts.append(
            f"""
[[buses]]
name = "flood"
kind = "modbus_tcp"
host = "127.0.0.1"
port = {modbus_port}
timeout_ms = 300
reconnect_min_ms = 50
reconnect_max_ms = 200
"""
        )
    parts.append(devices)
    if ingest_url is not None:
        parts.append(
            f"""
[[uplinks]]
name = "platform"
kind = "http"
url = "{ingest_url}"
batch_max_readings = 50
timeout_s = 2.0
retry_min_ms = 50
retry_max_ms = 300
"""
        )
    parts.append(extra)
    return "".join(parts)


def gateway_config(
    *,
    gateway: str,
    state_dir: Path,
    trust_file: Path,
    site: str,
    broker_port: int | None = None,
    http_url: str | None = None,
    groups: Sequence[str] = (),
    health_window_s: float = 3.0,
    mqtt_extra: str = "",
) -> str:
    """The local file: the bootstrap ([gateway], [fleet]) and the site it runs before any push."""
    channels = ""
    if broker_port is not None:
        channels += f"""
[fleet.mqtt]
host = "127.0.0.1"
port = {broker_port}
tls = false
reconnect_min_ms = 100
reconnect_max_ms = 1000
{mqtt_extra}
"""
    if http_url is not None:
        channels += f"""
[fleet.http]
url = "{http_url}"
poll_interval_s = 1
timeout_s = 5
"""
    return f"""
[gateway]
id = "{gateway}"
state_dir = "{state_dir}"

[fleet]
trust_file = "{trust_file}"
groups = {json.dumps(list(groups))}
health_window_s = {health_window_s}
{channels}
{site}
"""


# -- the broker side ----------------------------------------------------------------------------


async def publish(
    port: int, topic: str, data: bytes, *, retain: bool = True, user: str | None = None, password: str | None = None
) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", port, username=user, password=password, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.publish(topic, data, qos=1, retain=retain)


def gateway_topic(gateway: str, leaf: str = "bundle") -> str:
    return f"{PREFIX}/{gateway}/config/{leaf}"


def group_topic(group: str, leaf: str = "bundle") -> str:
    return f"{PREFIX}/groups/{group}/config/{leaf}"


class Reports:
    """A fleet tool's view: every gateway's retained ``config/reported``, and each one seen."""

    def __init__(self, port: int, *, user: str | None = None, password: str | None = None) -> None:
        self.port = port
        self.credentials = {"username": user, "password": password}
        self.latest: dict[str, dict[str, Any]] = {}
        self.seen: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, protocol=aiomqtt.ProtocolVersion.V5, **self.credentials
                ) as client:
                    await client.subscribe(f"{PREFIX}/+/config/reported", qos=1)
                    self._subscribed.set()
                    async for message in client.messages:
                        if isinstance(message.payload, bytes) and message.payload:
                            doc = json.loads(message.payload)
                            self.latest[doc["gateway"]] = doc
                            self.seen.append(doc)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    async def __aenter__(self) -> Reports:
        self._task = asyncio.create_task(self._run(), name="test-reports")
        await asyncio.wait_for(self._subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def mark(self) -> int:
        """Where the reports seen so far end: a wait ``after`` it sees only newer ones."""
        return len(self.seen)

    async def wait(
        self,
        gateway: str,
        predicate: Callable[[dict[str, Any]], bool],
        what: str,
        timeout_s: float = 20.0,
        after: int = 0,
    ) -> dict[str, Any]:
        def found() -> bool:
            return any(d["gateway"] == gateway and predicate(d) for d in self.seen[after:])

        try:
            await wait_until(found, timeout_s, f"{gateway}: {what}")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (last report: {self.latest.get(gateway)})") from None
        return next(d for d in reversed(self.seen[after:]) if d["gateway"] == gateway and predicate(d))

    async def outcome(
        self,
        gateway: str,
        version: int | None,
        outcome: str,
        code: str | None = None,
        timeout_s: float = 20.0,
        after: int = 0,
    ) -> dict[str, Any]:
        def match(d: dict[str, Any]) -> bool:
            last = d.get("last") or {}
            return last.get("version") == version and last.get("outcome") == outcome and last.get("code") == code

        label = f"{outcome}{': ' + code if code else ''} of version {version}"
        return await self.wait(gateway, match, label, timeout_s, after)


# -- the receiver side --------------------------------------------------------------------------


def times(ingest: IngestServer, gateway: str, name: str) -> list[float]:
    return sorted(rec["t"] for rec in ingest.records.values() if rec["n"] == f"{gateway}/{name}")


def events(ingest: IngestServer, gateway: str, point: str) -> list[dict[str, Any]]:
    return sorted(
        (rec for rec in ingest.records.values() if rec["n"] == f"{gateway}/gateway/{point}"), key=lambda r: r["t"]
    )


def largest_gap(values: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(values)), default=0.0)


# -- agents -------------------------------------------------------------------------------------


class FleetAgent:
    """``edgeagent run`` as a child process (through tests/fleet_main.py when the clock must be good)."""

    def __init__(self, config: Path, folder: Path, *, good_clock: bool = False, env: dict[str, str] | None = None):
        self.config = config
        self.folder = folder
        self.good_clock = good_clock
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {**os.environ, "PYTHONPATH": path, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.notify: NotifySocket | None = None
        self.log = folder / f"agent-{config.stem}.log"
        self.starts = 0

    async def start(self, env: dict[str, str] | None = None) -> None:
        self.starts += 1
        self.notify = NotifySocket(self.folder / f"notify-{self.config.stem}-{self.starts}.sock")
        environ = {**self.env, **(env or {}), "NOTIFY_SOCKET": str(self.notify.path)}
        argv = ["-m", "tests.fleet_main"] if self.good_clock else ["-m", "edgeagent", "run"]
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *argv,
                "--config",
                str(self.config),
                env=environ,
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        assert self.notify is not None and self.proc is not None
        deadline = time.monotonic() + timeout_s
        while not self.notify.has("READY=1"):
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"agent never became ready (exit {self.proc.returncode}): {self.log_tail()}")
            await asyncio.sleep(0.02)

    async def wait_exit(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await self._close_notify()
        return code

    async def stop(self) -> int:
        """SIGTERM (or SIGKILL if it will not go); the exit code."""
        if self.proc is None or self.proc.returncode is not None:
            await self._close_notify()
            return self.proc.returncode if self.proc is not None and self.proc.returncode is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await self.wait_exit(15)
        except TimeoutError:
            self.proc.kill()
            return await self.wait_exit(5)

    async def kill(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
        await self.wait_exit(10)

    async def _close_notify(self) -> None:
        if self.notify is not None:
            await self.notify.close()
            self.notify = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
