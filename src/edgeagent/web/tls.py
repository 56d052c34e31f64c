"""HTTPS for the status page: a configured certificate, or one the agent makes for itself.

Off loopback the page is served over TLS unless the config says ``plain_http_off_loopback``.
Without ``tls_cert_file`` the agent generates a self-signed certificate on its first
start (an EC P-256 key, ten years) in ``<state_dir>/web-tls/`` (0700, files 0600) and keeps
it, so its SHA-256 fingerprint stays the same: ``edgeagent doctor``, ``/api/status`` and the
login page show it, and a technician compares it with the label on the cabinet before
typing a password into a browser that warns about a self-signed certificate.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from edgeagent.config import WebConfig
from edgeagent.errors import ConfigError, ConfigProblem

log = logging.getLogger(__name__)

TLS_DIR = "web-tls"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
VALID_DAYS = 3650


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the page on this machine."""
    if host.lower().removesuffix(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def wants_tls(cfg: WebConfig) -> bool:
    """HTTPS with a configured certificate, and off loopback unless plain HTTP is asked for by name."""
    return cfg.tls_cert_file is not None or (not is_loopback(cfg.host) and not cfg.plain_http_off_loopback)


def plain_off_loopback(cfg: WebConfig) -> bool:
    """Plain HTTP on an address others can reach: allowed only by the explicit setting, and warned about."""
    return cfg.enabled and not is_loopback(cfg.host) and not wants_tls(cfg)


def generated_paths(state_dir: Path) -> tuple[Path, Path]:
    folder = state_dir / TLS_DIR
    return folder / CERT_FILE, folder / KEY_FILE


def certificate_paths(cfg: WebConfig, state_dir: Path) -> tuple[Path, Path]:
    """The certificate and key the page serves with: the configured pair, else the generated one."""
    if cfg.tls_cert_file is not None and cfg.tls_key_file is not None:
        return cfg.tls_cert_file, cfg.tls_key_file
    return generated_paths(state_dir)


def ensure_certificate(cfg: WebConfig, state_dir: Path, gateway_id: str) -> tuple[Path, Path]:
    """The pair to serve with, generating the self-signed one if there is none yet."""
    cert, key = certificate_paths(cfg, state_dir)
    if cfg.tls_cert_file is None and not (cert.exists() and key.exists()):
        generate_self_signed(cert, key, gateway_id, cfg.host)
        log.info("generated a self-signed certificate for the status page: SHA-256 %s", fingerprint(cert))
    return cert, key


def generate_self_signed(cert_path: Path, key_path: Path, gateway_id: str, host: str) -> None:
    """Write a new self-signed certificate and its key (private files, written whole or not at all)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgeagent {gateway_id}")])
    alt: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        address = ipaddress.ip_address(host)
        if not address.is_unspecified and not address.is_loopback:
            alt.append(x509.IPAddress(address))
    except ValueError:
        alt.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(cert_path.parent, 0o700)
    _write_private(key_path, key_pem)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the certificate's DER bytes, as browsers show it (``AB:CD:...``)."""
    der = ssl.PEM_cert_to_DER_cert(cert_path.read_text())
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def served_fingerprint(cfg: WebConfig, state_dir: Path) -> str | None:
    """The fingerprint the page shows (or will show): None when it serves plain HTTP or has no certificate yet."""
    if not wants_tls(cfg):
        return None
    cert, _ = certificate_paths(cfg, state_dir)
    try:
        return fingerprint(cert)
    except (OSError, ValueError):
        return None


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2 at least, with the page's certificate; a broken pair is a config error naming the key."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([ConfigProblem("", "web.tls_cert_file", f"cannot load {cert} with {key}: {reason}")]) from exc
    return ctx


def tls_problems(cfg: WebConfig, problem: Callable[[str, str], ConfigProblem]) -> list[ConfigProblem]:
    """What ``run`` would refuse about the page's TLS files (check-config calls this too)."""
    if not cfg.enabled or cfg.tls_cert_file is None or cfg.tls_key_file is None:
        return []
    try:
        server_context(cfg.tls_cert_file, cfg.tls_key_file)
    except ConfigError as exc:
        return [problem(p.path.removeprefix("web."), p.message) for p in exc.problems]
    return []
