"""A real Mosquitto broker for the tests, on 127.0.0.1 and a free port.

The broker keeps its state on disk (``persistence true``) and is restarted with
SIGTERM, so a restart keeps every persistent session and the QoS 1 messages queued for
it, as a production broker does. ``pause()``/``resume()`` freeze it with SIGSTOP and
SIGCONT: its sockets stay open and the kernel still accepts bytes and connections, but
nothing is answered, which is what a hung broker or a dead path looks like to a client.

TLS material (a CA, a server certificate for 127.0.0.1/localhost and a client
certificate) is generated with ``cryptography`` for each test; nothing is checked in.
Without a ``mosquitto`` binary the test is skipped, except under CI (``CI=true``),
where a missing broker is a failure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import ipaddress
import os
import pwd
import secrets
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
CERT_LIFETIME = datetime.timedelta(days=2)
# Mosquitto 2.0's password hash: PBKDF2-SHA512, written as $7$<iterations>$<salt>$<hash>.
PASSWORD_ITERATIONS = 101


def mosquitto_binary() -> str:
    """The broker's path; skip the test without one (fail under CI, which installs it)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    reason = "mosquitto is not installed (apt-get install mosquitto); .ci/run installs it"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Pki:
    """Files of a throw-away certificate authority, a server and a client certificate."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path, *, label: str = "test") -> Pki:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue(f"edgeagent {label} CA", ca_key, _name(f"edgeagent {label} CA"), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue("127.0.0.1", server_key, ca_cert.subject, ca_key, server=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue("gw-test", client_key, ca_cert.subject, ca_key)
    pki = Pki(
        ca_cert=folder / f"{label}-ca.pem",
        server_cert=folder / f"{label}-server.pem",
        server_key=folder / f"{label}-server.key",
        client_cert=folder / f"{label}-client.pem",
        client_key=folder / f"{label}-client.key",
    )
    for cert, path in ((ca_cert, pki.ca_cert), (server_cert, pki.server_cert), (client_cert, pki.client_cert)):
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, pki.server_key)
    _write_key(client_key, pki.client_key)
    return pki


def password_line(user: str, password: str) -> str:
    """One line of a Mosquitto 2.0 password file (what ``mosquitto_passwd`` writes)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PASSWORD_ITERATIONS)
    return f"{user}:$7${PASSWORD_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


class Mosquitto:
    """One broker process; ``port`` is the plain listener, ``tls_port`` the TLS one (if any)."""

    def __init__(
        self,
        folder: Path,
        *,
        pki: Pki | None = None,
        require_certificate: bool = False,
        users: dict[str, str] | None = None,
        acl: str | None = None,
    ) -> None:
        self.binary = mosquitto_binary()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if pki is not None else None
        self.log_path = folder / "mosquitto.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.paused = False
        self.config_path = folder / "mosquitto.conf"
        self.config_path.write_text(self._config(pki, require_certificate, users, acl))

    def _config(self, pki: Pki | None, require_certificate: bool, users: dict[str, str] | None, acl: str | None) -> str:
        lines = [
            # Started as root (CI), Mosquitto would switch to its own user and lose access to
            # the test's files; naming the current user keeps it as it is.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "persistence true",
            f"persistence_location {self.folder}/",
            "persistence_file mosquitto.db",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Queue for an offline persistent session without a limit: a test counts every message.
            "max_queued_messages 0",
            f"allow_anonymous {'false' if users else 'true'}",
        ]
        if users:
            passwords = self.folder / "passwords"
            passwords.write_text("".join(password_line(u, p) for u, p in users.items()))
            passwords.chmod(0o600)
            lines.append(f"password_file {passwords}")
        if acl is not None:
            acl_path = self.folder / "acl"
            acl_path.write_text(acl)
            lines.append(f"acl_file {acl_path}")
        lines.append(f"listener {self.port} 127.0.0.1")
        if pki is not None:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {pki.ca_cert}",
                f"certfile {pki.server_cert}",
                f"keyfile {pki.server_key}",
                f"require_certificate {'true' if require_certificate else 'false'}",
            ]
        return "\n".join(lines) + "\n"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "broker not running"
        return self.proc.pid

    async def start(self) -> None:
        """Start the broker and return once its listeners accept connections."""
        assert self.proc is None, "broker already running"
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary, "-c", str(self.config_path), stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        for port in (self.port, self.tls_port):
            if port is not None:
                await self._wait_listening(port, deadline)

    async def _wait_listening(self, port: int, deadline: float) -> None:
        while True:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"mosquitto exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"mosquitto never listened on {port}: {self.log_tail()}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """SIGTERM (after SIGCONT if paused): Mosquitto writes its sessions to disk and exits."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            if self.paused:
                proc.send_signal(signal.SIGCONT)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self.paused = False

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def pause(self) -> None:
        """Freeze the broker: connections stay open, nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def __aenter__(self) -> Mosquitto:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
