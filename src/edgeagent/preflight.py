"""Preflight: what ``run`` needs of the files, folders and port a valid config names.

``edgeagent check-config`` and ``edgeagent run`` both call ``check_site`` right after
``load_config``, before anything starts, so a config that check-config accepts is not
refused at start, and one that run would refuse, check-config refuses first, with the
same key path. The readers here (``read_secret``, ``bthome_key``, ``mqtt_tls_context``)
are also the ones the uplinks and devices use when they start: a file that changed
between the check and the start is refused in the same words, as a ``ConfigError``
(exit 2, which systemd does not restart).

The checks run as the user who runs them: check a gateway's config as the service's
user (``sudo -u edgeagent edgeagent check-config FILE``). Only what waiting cannot fix
is refused here; a port in use, or an address or host name not (yet) there, is a
failure at run time, retried.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeagent.config import DeviceConfig, HttpUplinkConfig, Located, MqttUplinkConfig, SiteConfig
from edgeagent.errors import ConfigError, ConfigProblem

# A secret file is one short line; reading stops here (a token_file pointed at a log or /dev/zero).
MAX_SECRET_BYTES = 64 * 1024
BTHOME_KEY_BYTES = 16  # protocols.bthome.KEY_BYTES, not imported here: that pulls in the AES code
# The buffer's file and its companions (WAL, shared memory, the numbered tail) in state_dir.
STORE_FILES = ("buffer.sqlite", "buffer.sqlite-wal", "buffer.sqlite-shm", "buffer.sqlite-tail")


def check_site(site: SiteConfig) -> None:
    """Raise ConfigError listing everything named by a valid config that ``run`` could not use."""
    problems = [*_state_dir_problems(site), *_web_problems(site)]
    for up in site.uplinks:
        if isinstance(up, HttpUplinkConfig) and up.token_file is not None:
            problems += _problems_of(read_secret, up, "token_file")
        if isinstance(up, MqttUplinkConfig):
            if up.password_file is not None:
                problems += _problems_of(read_secret, up, "password_file")
            if up.tls:
                problems += _problems_of(mqtt_tls_context, up)
    for dev in site.devices:
        if dev.key_file is not None:
            problems += _problems_of(bthome_key, dev)
    if site.fleet is not None:
        from edgeagent.fleet.compose import fleet_problems  # the trust file and the fleet channels' files

        problems += fleet_problems(site.fleet)
    if site.web.enabled:
        problems += _page_problems(site)
    if problems:
        raise ConfigError(problems)


def _problems_of(check: Callable[..., object], *args: Any) -> list[ConfigProblem]:
    try:
        check(*args)
    except ConfigError as exc:
        return exc.problems
    return []


# -- files ---------------------------------------------------------------------------


def read_secret(part: Located, key: str) -> str:
    """The one line of text in the file that ``part.<key>`` names (a token, a password, a key), stripped.

    Its content never appears in a message. Control characters are refused: an HTTP
    client refuses them in a header at the first send, long after start.
    """
    path: Path = getattr(part, key)
    what = key.removesuffix("_file") + " file"

    def refuse(message: str) -> ConfigError:
        return ConfigError([part.problem(key, message)])

    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise refuse(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_SECRET_BYTES:
        raise refuse(f"{what} {path} is larger than {MAX_SECRET_BYTES} bytes: not a secret file")
    try:
        text = raw.decode().strip()
    except UnicodeDecodeError as exc:
        raise refuse(f"{what} {path} is not UTF-8 text") from exc
    if not text:
        raise refuse(f"{what} {path} is empty")
    if "\n" in text:
        raise refuse(f"{what} {path} holds more than one line")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise refuse(f"{what} {path} holds control characters")
    return text


class _WebPart:
    """The ``[web]`` table as ``read_secret`` takes a part: its file keys, and problems under ``web.``."""

    def __init__(self, site: SiteConfig) -> None:
        self._site = site
        self.api_token_file = site.web.api_token_file

    def problem(self, key: str, message: str) -> ConfigProblem:
        return self._site.problem(f"web.{key}", message)


def web_api_token(site: SiteConfig) -> str | None:
    """The bearer token for the page's API and ``/metrics``, from ``web.api_token_file``."""
    if site.web.api_token_file is None:
        return None
    return read_secret(_WebPart(site), "api_token_file")  # type: ignore[arg-type]


def _page_problems(site: SiteConfig) -> list[ConfigProblem]:
    from edgeagent.web.tls import tls_problems

    part = _WebPart(site)
    problems = _problems_of(web_api_token, site) + tls_problems(site.web, part.problem)
    users = site.web.users_file
    if users is not None and users.exists() and not os.access(users, os.R_OK):
        problems.append(part.problem("users_file", f"{users} is not readable by this user"))
    return problems


def bthome_key(dev: DeviceConfig) -> bytes | None:
    """A BTHome device's key, from ``key`` or ``key_file``; None when it sends in the clear."""
    if dev.key is not None:
        return bytes.fromhex(dev.key.get_secret_value())
    if dev.key_file is None:
        return None
    text = read_secret(dev, "key_file")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != BTHOME_KEY_BYTES:
        message = f"key file {dev.key_file} does not hold {2 * BTHOME_KEY_BYTES} hex digits"
        raise ConfigError([dev.problem("key_file", message)])
    return key


class _Encrypted(Exception):
    """A private key asked for a passphrase (which would otherwise be prompted for on a terminal)."""


def _no_passphrase() -> str:
    raise _Encrypted


def mqtt_tls_context(up: MqttUplinkConfig) -> ssl.SSLContext:
    """The TLS context the uplink connects with: TLS 1.2 at least, its CA bundle and client certificate loaded."""
    for key in ("ca_file", "cert_file", "key_file"):
        path: Path | None = getattr(up, key)
        if path is not None:
            try:
                with path.open("rb"):
                    pass
            except OSError as exc:
                raise ConfigError([up.problem(key, f"cannot read {path}: {exc.strerror or exc}")]) from exc
    try:
        ctx = ssl.create_default_context(cafile=str(up.ca_file) if up.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        message = f"cannot load the CA bundle {up.ca_file}: {_ssl_reason(exc)}"
        raise ConfigError([up.problem("ca_file", message)]) from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if up.cert_file is not None and up.key_file is not None:
        try:
            ctx.load_cert_chain(up.cert_file, up.key_file, password=_no_passphrase)
        except _Encrypted as exc:
            message = f"{up.key_file} is protected by a passphrase: give the agent an unencrypted key"
            raise ConfigError([up.problem("key_file", message)]) from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([_client_cert_problem(up, exc)]) from exc
    return ctx


def _client_cert_problem(up: MqttUplinkConfig, exc: Exception) -> ConfigProblem:
    """Which of cert_file and key_file is wrong (OpenSSL's own reason is often just "PEM lib")."""
    assert up.cert_file is not None and up.key_file is not None
    if not _holds(up.cert_file, b"-----BEGIN CERTIFICATE-----"):
        return up.problem("cert_file", f"{up.cert_file} holds no PEM certificate")
    if not _holds(up.key_file, b"PRIVATE KEY-----"):
        return up.problem("key_file", f"{up.key_file} holds no PEM private key")
    if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
        return up.problem("key_file", f"{up.key_file} is not the key of the certificate in cert_file")
    return up.problem("cert_file", f"cannot load the client certificate: {_ssl_reason(exc)}")


def _holds(path: Path, marker: bytes) -> bool:
    try:
        return marker in path.read_bytes()
    except OSError:
        return False


def _ssl_reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND":
        return "no PEM certificate in it"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


# -- folders and ports ---------------------------------------------------------------


def _state_dir_problems(site: SiteConfig) -> list[ConfigProblem]:
    """The buffer's folder: a folder this user can write, or one it can create; its files usable."""
    path = site.gateway.state_dir
    where = "gateway.state_dir"
    if path.is_symlink() and not path.exists():
        return [site.problem(where, f"{path} is a symbolic link to nothing")]
    if not path.exists():
        parent = next(p for p in path.parents if p.exists())
        if not parent.is_dir():
            return [site.problem(where, f"cannot create {path}: {parent} is not a folder")]
        if not os.access(parent, os.W_OK | os.X_OK):
            return [site.problem(where, f"cannot create {path}: {parent} is not writable by this user")]
        return []
    if not path.is_dir():
        return [site.problem(where, f"{path} is not a folder")]
    if not os.access(path, os.W_OK | os.X_OK):
        return [site.problem(where, f"{path} is not writable by this user")]
    problems = []
    for name in STORE_FILES:
        file = path / name
        if file.exists() and not (file.is_file() and os.access(file, os.R_OK | os.W_OK)):
            problems.append(site.problem(where, f"{file} is not a file this user can read and write"))
    return problems


def _web_problems(site: SiteConfig) -> list[ConfigProblem]:
    """A status page port this user may not listen on (a privileged one): waiting will not change that."""
    web = site.web
    if not web.enabled or web.port == 0:
        return []
    try:
        addresses = socket.getaddrinfo(web.host, web.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return []  # a name that does not resolve yet: run reports it, and systemd retries
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
        except PermissionError:
            message = f"this user may not listen on port {web.port} (a privileged port); use 1024 or above"
            return [site.problem("web.port", message)]
        except OSError:
            continue  # in use, or an address not here yet: a run-time failure
    return []


__all__ = ["bthome_key", "check_site", "mqtt_tls_context", "read_secret", "web_api_token"]
