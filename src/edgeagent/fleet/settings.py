"""The ``[fleet]`` section: the bootstrap that connects a gateway to its fleet.

It is read only from the local file. A pushed bundle cannot carry it (nor change
``[gateway]``), so no push can cut a gateway off from the next one: the trust file,
the channels and their credentials stay whatever the technician installed.

This module imports nothing of the rest of the config (``config.py`` imports it), so
its parts carry their own small strict base with the same ``problem()`` as ``Located``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, Strict, field_validator, model_validator

from edgeagent.errors import ConfigProblem

_Path = Annotated[Path, Strict(False)]
# Gateway ids and group tags become MQTT topic levels: no '/', '+', '#' or spaces.
Tag = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
GATEWAY_PLACEHOLDER = "{gateway}"


class _Part(BaseModel):
    """Strict like the rest of the config, and able to name its own key path in a problem."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    _file: str = PrivateAttr(default="<config>")
    _where: str = PrivateAttr(default="")

    def problem(self, key: str, message: str) -> ConfigProblem:
        path = f"{self._where}.{key}" if self._where else key
        return ConfigProblem(self._file, path, message)

    def _located(self, base: Path, file: str, where: str, keys: tuple[str, ...]) -> _Part:
        update = {k: (base / getattr(self, k)).resolve() for k in keys if getattr(self, k) is not None}
        part = self.model_copy(update=update)
        part._file, part._where = file, where
        return part


class FleetMqttConfig(_Part):
    """The broker the fleet's retained bundle topics live on (usually the MQTT uplink's broker)."""

    host: str = Field(min_length=1)
    port: int = Field(default=8883, ge=1, le=65535)
    tls: bool = Field(default=True, description="TLS with server verification")
    ca_file: _Path | None = Field(default=None, description="CA bundle to verify the broker (default: system CAs)")
    cert_file: _Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: _Path | None = Field(default=None, description="client certificate's private key")
    username: str | None = None
    password_file: _Path | None = Field(default=None, description="file holding the password")
    client_id: str | None = Field(default=None, max_length=128, description="default: edgeagent-<gateway>-fleet")
    topic_prefix: str = Field(default="edgeagent", pattern=r"^[^#+\s]+$")
    keepalive_s: int = Field(default=60, ge=5, le=3600)
    reconnect_min_ms: int = Field(default=1000, gt=0, le=600_000)
    reconnect_max_ms: int = Field(default=60_000, gt=0, le=3_600_000)

    @model_validator(mode="after")
    def _consistent(self) -> FleetMqttConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.cert_file is not None and not self.tls:
            raise ValueError("a client certificate needs tls = true")
        if self.reconnect_max_ms < self.reconnect_min_ms:
            raise ValueError("reconnect_max_ms must be >= reconnect_min_ms")
        return self


class FleetHttpConfig(_Part):
    """A URL polled for bundles with ETag / If-None-Match; ``{gateway}`` in it is this gateway's id."""

    url: str = Field(min_length=1)
    poll_interval_s: float = Field(default=300.0, ge=1, le=86_400)
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    token_file: _Path | None = Field(default=None, description="file holding a bearer token")
    ca_file: _Path | None = Field(default=None, description="CA bundle to verify the server (default: system CAs)")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url.replace(GATEWAY_PLACEHOLDER, "gw"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an http:// or https:// URL (it may hold {gateway})")
        if parts.username or parts.password:
            raise ValueError("no credentials in the URL: use token_file")
        if "{" in url.replace(GATEWAY_PLACEHOLDER, ""):
            raise ValueError("the only placeholder is {gateway}")
        return url

    def url_for(self, gateway_id: str) -> str:
        return self.url.replace(GATEWAY_PLACEHOLDER, gateway_id)


class FleetConfig(_Part):
    """How this gateway hears of pushes and whom it believes: local only, never in a bundle."""

    trust_file: _Path = Field(description="the trust file: keys, threshold, epoch (JSON)")
    groups: list[Tag] = Field(default_factory=list, description="group tags this gateway takes bundles for")
    health_window_s: float = Field(default=60.0, ge=1, le=3600, description="how long an applied bundle is watched")
    mqtt: FleetMqttConfig | None = None
    http: FleetHttpConfig | None = None

    @model_validator(mode="after")
    def _a_channel(self) -> FleetConfig:
        if self.mqtt is None and self.http is None:
            raise ValueError("give at least one channel: [fleet.mqtt] or [fleet.http]")
        if len(set(self.groups)) != len(self.groups):
            raise ValueError("groups: a tag is listed twice")
        return self

    def resolved(self, base: Path, file: str) -> FleetConfig:
        """Paths made absolute against the config's folder; each part told its key path."""
        mqtt = self.mqtt
        if mqtt is not None:
            mqtt = mqtt._located(base, file, "fleet.mqtt", ("ca_file", "cert_file", "key_file", "password_file"))
        http = self.http
        if http is not None:
            http = http._located(base, file, "fleet.http", ("token_file", "ca_file"))
        fleet = self._located(base, file, "fleet", ("trust_file",))
        out = fleet.model_copy(update={"mqtt": mqtt, "http": http})
        out._file, out._where = file, "fleet"
        return out  # type: ignore[return-value]
