"""Site configuration: one TOML file, validated by pydantic, every error with its key path.

Unknown keys are errors (a misspelt key silently ignored is a setting silently lost).
Durations and sizes carry their unit in the key name. Relative paths are taken
relative to the config file's folder, so a config means the same wherever it is run.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeagent.errors import ConfigError, ConfigProblem
from edgeagent.profiles import Profile, format_validation_error, load_profile, read_toml

Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayConfig(_Strict):
    """Who this gateway is and where it keeps its state."""

    id: Ident
    state_dir: Path = Path("/var/lib/edgeagent")


MIB = 1024 * 1024


class ClassBudget(_Strict):
    """The bytes one priority class may use in the buffer, and what to do when it is full."""

    max_bytes: int = Field(ge=64 * 1024, le=1 << 40)
    policy: Literal["drop_oldest", "thin", "reject_new"]
    thin_keep_every: int = Field(default=2, ge=2, le=100, description="with policy thin: keep every n-th old reading")


class StoreConfig(_Strict):
    """The local buffer: commits are batched to spare the SD card; each class has a budget."""

    commit_interval_ms: int = Field(default=1000, gt=0, le=60_000)
    commit_max_readings: int = Field(default=1000, gt=0, le=100_000)
    max_pending_readings: int = Field(default=100_000, ge=1000, le=10_000_000)
    alarm: ClassBudget = ClassBudget(max_bytes=16 * MIB, policy="reject_new")
    event: ClassBudget = ClassBudget(max_bytes=32 * MIB, policy="drop_oldest")
    telemetry: ClassBudget = ClassBudget(max_bytes=256 * MIB, policy="drop_oldest")


class WebConfig(_Strict):
    """The local status page."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port")


class ModbusTcpBus(_Strict):
    """A Modbus TCP endpoint (a device, or an RS-485 gateway serving several unit ids)."""

    name: Ident
    kind: Literal["modbus_tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    timeout_ms: int = Field(default=1000, gt=0, le=60_000)
    reconnect_min_ms: int = Field(default=500, gt=0, le=600_000)
    reconnect_max_ms: int = Field(default=30_000, gt=0, le=3_600_000)

    @model_validator(mode="after")
    def _backoff(self) -> ModbusTcpBus:
        if self.reconnect_max_ms < self.reconnect_min_ms:
            raise ValueError("reconnect_max_ms must be >= reconnect_min_ms")
        return self


BusConfig = ModbusTcpBus


class AssetConfig(_Strict):
    """What the device is as an asset: where, whose, which model."""

    location: str = Field(min_length=1)
    owner: str = Field(min_length=1)
    model: str | None = None
    serial: str | None = None
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)


class DeviceConfig(_Strict):
    """A field device: a profile at an address on a bus."""

    id: Ident
    profile: str = Field(min_length=1)
    bus: str
    unit_id: int = Field(ge=1, le=247)
    poll_interval_s: float | None = Field(default=None, gt=0, le=86400)
    retries: int = Field(default=1, ge=0, le=5)
    backoff_max_s: float = Field(default=30.0, gt=0, le=3600)
    offline_after_failures: int = Field(default=3, ge=1, le=100)
    tags: list[str] = Field(default_factory=list)
    asset: AssetConfig


PriorityName = Literal["alarm", "event", "telemetry"]


class _UplinkBase(_Strict):
    """What every destination has: its own cursor, filter, pace and retry limits."""

    name: Ident
    batch_max_readings: int = Field(default=500, ge=1, le=50_000)
    retry_min_ms: int = Field(default=500, gt=0, le=600_000)
    retry_max_ms: int = Field(default=60_000, gt=0, le=3_600_000)
    bandwidth_bytes_per_s: int | None = Field(default=None, ge=100, description="cap on payload bytes sent per second")
    classes: list[PriorityName] = Field(
        default_factory=lambda: ["alarm", "event", "telemetry"], min_length=1, description="priority classes sent"
    )
    device_tags: list[str] = Field(
        default_factory=list, description="send only devices carrying one of these tags (empty: all devices)"
    )

    @model_validator(mode="after")
    def _retry(self) -> _UplinkBase:
        if self.retry_max_ms < self.retry_min_ms:
            raise ValueError("retry_max_ms must be >= retry_min_ms")
        return self


class HttpUplinkConfig(_UplinkBase):
    """An HTTP(S) ingest endpoint that accepts gzip'd SenML batches."""

    kind: Literal["http"]
    url: AnyHttpUrl
    token_file: Path | None = Field(default=None, description="file holding a bearer token")
    timeout_s: float = Field(default=15.0, gt=0, le=600)
    rejected_retry_s: float = Field(default=300.0, gt=0, le=86400)


class MqttUplinkConfig(_UplinkBase):
    """An MQTT 5 broker (or cluster); batches are published with QoS 1 on a persistent session."""

    kind: Literal["mqtt"]
    host: str = Field(min_length=1)
    port: int = Field(default=8883, ge=1, le=65535)
    tls: bool = Field(default=True, description="TLS with server verification")
    ca_file: Path | None = Field(default=None, description="CA bundle to verify the broker (default: system CAs)")
    cert_file: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(default=None, description="client certificate's private key")
    username: str | None = None
    password_file: Path | None = Field(default=None, description="file holding the password")
    client_id: str | None = Field(default=None, max_length=128, description="default: edgeagent-<gateway>-<name>")
    topic_prefix: str = Field(default="edgeagent", pattern=r"^[^#+\s]+$")
    keepalive_s: int = Field(default=60, ge=5, le=3600)
    session_expiry_s: int = Field(default=86_400, ge=0, le=4_294_967_295)
    ack_timeout_s: float = Field(default=30.0, gt=0, le=3600, description="PUBACK wait before the client is rebuilt")

    @model_validator(mode="after")
    def _certs(self) -> MqttUplinkConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.cert_file is not None and not self.tls:
            raise ValueError("a client certificate needs tls = true")
        return self


UplinkConfig = Annotated[HttpUplinkConfig | MqttUplinkConfig, Field(discriminator="kind")]


class SiteConfig(_Strict):
    """Everything one gateway runs."""

    gateway: GatewayConfig
    store: StoreConfig = StoreConfig()
    web: WebConfig = WebConfig()
    buses: list[BusConfig] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(default_factory=list)
    uplinks: list[UplinkConfig] = Field(default_factory=list)


def _duplicates(items: list[str]) -> set[str]:
    return {x for x, n in Counter(items).items() if n > 1}


def _cross_check(file: str, site: SiteConfig) -> tuple[list[ConfigProblem], dict[str, Profile]]:
    """What pydantic cannot see alone: references between sections, and profiles."""
    problems: list[ConfigProblem] = []
    profiles: dict[str, Profile] = {}
    for section, names in (
        ("buses", [b.name for b in site.buses]),
        ("devices", [d.id for d in site.devices]),
        ("uplinks", [u.name for u in site.uplinks]),
    ):
        for dup in sorted(_duplicates(names)):
            problems.append(ConfigProblem(file, section, f"duplicate name {dup!r}"))
    bus_names = {b.name for b in site.buses}
    for i, dev in enumerate(site.devices):
        if dev.bus not in bus_names:
            problems.append(ConfigProblem(file, f"devices[{i}].bus", f"no bus named {dev.bus!r}"))
        if dev.profile not in profiles:
            try:
                profiles[dev.profile] = load_profile(dev.profile)
            except ConfigError as exc:
                detail = "; ".join(p.message for p in exc.problems)
                problems.append(ConfigProblem(file, f"devices[{i}].profile", detail))
    units = [(d.bus, d.unit_id) for d in site.devices]
    for i, dev in enumerate(site.devices):
        if units.count((dev.bus, dev.unit_id)) > 1:
            problems.append(
                ConfigProblem(
                    file,
                    f"devices[{i}].unit_id",
                    f"unit id {dev.unit_id} used twice on bus {dev.bus!r}",
                )
            )
    return problems, profiles


def _resolve_paths(site: SiteConfig, base: Path) -> SiteConfig:
    gateway = site.gateway.model_copy(update={"state_dir": (base / site.gateway.state_dir).resolve()})
    uplinks = [
        u.model_copy(
            update={
                key: (base / getattr(u, key)).resolve()
                for key in ("token_file", "password_file", "ca_file", "cert_file", "key_file")
                if getattr(u, key, None) is not None
            }
        )
        for u in site.uplinks
    ]
    return site.model_copy(update={"gateway": gateway, "uplinks": uplinks})


def parse_config(data: dict[str, object], *, file: str = "<config>", base: Path | None = None) -> SiteConfig:
    """Validate a parsed config; raise ConfigError listing every problem."""
    try:
        site = SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(file, exc)) from exc
    problems, _ = _cross_check(file, site)
    if problems:
        raise ConfigError(problems)
    return _resolve_paths(site, base or Path.cwd())


def load_config(path: Path) -> SiteConfig:
    """Read, validate and resolve a config file."""
    return parse_config(read_toml(path), file=str(path), base=path.resolve().parent)


def profiles_for(site: SiteConfig) -> dict[str, Profile]:
    """The profile of every device, by profile name (the config is already validated)."""
    return {d.profile: load_profile(d.profile) for d in site.devices}


__all__ = [
    "AssetConfig",
    "BusConfig",
    "ConfigError",
    "DeviceConfig",
    "GatewayConfig",
    "HttpUplinkConfig",
    "MqttUplinkConfig",
    "SiteConfig",
    "StoreConfig",
    "UplinkConfig",
    "WebConfig",
    "load_config",
    "parse_config",
    "profiles_for",
]
