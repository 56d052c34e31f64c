"""Site configuration: one TOML file, validated by pydantic, every error with its key path.

Unknown keys are errors (a misspelt key silently ignored is a setting silently lost).
Durations and sizes carry their unit in the key name. Relative paths are taken
relative to the config file's folder, so a config means the same wherever it is run.
What the files and folders a config names must hold is checked by ``preflight``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgeagent.errors import ConfigError, ConfigProblem
from edgeagent.fleet.settings import FleetConfig
from edgeagent.profiles import (
    ByteSize,
    Profile,
    PwdProfile,
    RadarProfile,
    SerialProfile,
    SerialSettings,
    StopBits,
    did_you_mean,
    format_validation_error,
    load_profile,
    profile_path,
    read_toml,
)
from edgeagent.rules.bind import rule_problems
from edgeagent.rules.config import RuleConfig, TimeZoneName, included_rules

Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
ConfigPath = Annotated[Path, Strict(False)]
"""A path: TOML writes it as a string, which is the one conversion strict mode is told to make."""


class _Strict(BaseModel):
    """Unknown keys are errors, and so is a value of the wrong TOML type (``port = "502"``, ``unit_id = true``).

    Strict mode still takes an integer where a float is expected (``poll_interval_s = 10``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Located(_Strict):
    """A part of a config that knows where it was written (file and key path, e.g. ``uplinks[0]``).

    Files a config names are read again at start (by an uplink, say); a problem found
    then must name the same key path that ``check-config`` would have named.
    """

    _file: str = PrivateAttr(default="<config>")
    _where: str = PrivateAttr(default="")

    def problem(self, key: str, message: str) -> ConfigProblem:
        """A problem with this part's ``key`` (a dotted path below it)."""
        path = f"{self._where}.{key}" if self._where else key
        return ConfigProblem(self._file, path, message)


class GatewayConfig(_Strict):
    """Who this gateway is and where it keeps its state."""

    id: Ident
    state_dir: ConfigPath = Path("/var/lib/edgeagent")
    time_zone: TimeZoneName | None = Field(default=None, description="IANA zone for rules' time of day")


MIB = 1024 * 1024


class ClassBudget(_Strict):
    """The bytes one priority class may use in the buffer, and what to do when it is full."""

    max_bytes: int = Field(ge=64 * 1024, le=1 << 40)
    policy: Literal["drop_oldest", "thin", "reject_new"]
    thin_keep_every: int = Field(default=2, ge=2, le=100, description="with policy thin: keep every n-th old reading")


DEFAULT_BUDGETS: dict[str, ClassBudget] = {
    "alarm": ClassBudget(max_bytes=16 * MIB, policy="reject_new"),
    "event": ClassBudget(max_bytes=32 * MIB, policy="drop_oldest"),
    "telemetry": ClassBudget(max_bytes=256 * MIB, policy="drop_oldest"),
}


class StoreConfig(_Strict):
    """The local buffer: commits are batched to spare the SD card; each class has a budget."""

    commit_interval_ms: int = Field(default=1000, gt=0, le=60_000)
    commit_max_readings: int = Field(default=1000, gt=0, le=100_000)
    max_pending_readings: int = Field(default=100_000, ge=1000, le=10_000_000)
    alarm: ClassBudget = DEFAULT_BUDGETS["alarm"]
    event: ClassBudget = DEFAULT_BUDGETS["event"]
    telemetry: ClassBudget = DEFAULT_BUDGETS["telemetry"]

    @field_validator("alarm", "event", "telemetry", mode="before")
    @classmethod
    def _class_defaults(cls, value: object, info: ValidationInfo) -> object:
        """A class's table with only some keys takes that class's defaults for the rest."""
        if isinstance(value, dict) and info.field_name is not None:
            return {**DEFAULT_BUDGETS[info.field_name].model_dump(), **value}
        return value


_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def _listen_host(value: str) -> str:
    """An IP address or a host name: a port or brackets in it would fail only at start."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOST_NAME.match(value.lower().removesuffix(".")):
            raise ValueError("an IP address or a host name, without port or brackets") from None
    return value


class WebConfig(_Strict):
    """The local status page, and the limits that keep a hostile client from hurting the agent."""

    enabled: bool = True
    host: Annotated[str, AfterValidator(_listen_host)] = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port")
    request_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="a connection must send a complete request head within this"
    )
    max_connections: int = Field(default=64, ge=1, le=100_000, description="more are closed as soon as accepted")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="names the page answers to besides IP addresses and localhost"
    )
    # Who may see the page, and how it is reached (web/auth.py, web/tls.py).
    tls_cert_file: ConfigPath | None = Field(default=None, description="PEM certificate; default: generated")
    tls_key_file: ConfigPath | None = Field(default=None, description="PEM private key of tls_cert_file")
    plain_http_off_loopback: bool = Field(default=False, description="serve plain HTTP on a non-loopback address")
    users_file: ConfigPath | None = Field(default=None, description="default: web-users in state_dir")
    api_token_file: ConfigPath | None = Field(default=None, description="bearer token for /api and /metrics")
    metrics_auth: Literal["token", "none"] = "token"
    session_idle_s: float = Field(default=1800.0, ge=60, le=7 * 86400)
    session_max_s: float = Field(default=12 * 3600.0, ge=60, le=30 * 86400)
    login_failures_per_minute: int = Field(default=5, ge=1, le=1000)
    login_pause_s: float = Field(default=30.0, gt=0, le=3600, description="first pause; doubles, capped at 15 min")

    @model_validator(mode="after")
    def _tls_pair(self) -> WebConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_cert_file is not None and self.plain_http_off_loopback:
            raise ValueError("plain_http_off_loopback contradicts tls_cert_file: choose one")
        if self.session_max_s < self.session_idle_s:
            raise ValueError("session_max_s must be >= session_idle_s")
        return self

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        out = []
        for host in hosts:
            name = host.strip().lower().removesuffix(".")
            if not _HOST_NAME.match(name):
                raise ValueError(
                    f"allowed_hosts: {host!r} is not a host name (give the bare name, "
                    "like 'gateway-17.roads.example', without scheme or port)"
                )
            out.append(name)
        return out


Parity = Literal["N", "E", "O"]


class _Reconnecting(_Strict):
    """A bus that is opened (dialled, or its port or adapter opened) again after a failure."""

    reconnect_min_ms: int = Field(default=500, gt=0, le=600_000)
    reconnect_max_ms: int = Field(default=30_000, gt=0, le=3_600_000)

    @model_validator(mode="after")
    def _backoff(self) -> _Reconnecting:
        if self.reconnect_max_ms < self.reconnect_min_ms:
            raise ValueError("reconnect_max_ms must be >= reconnect_min_ms")
        return self


class ModbusTcpBus(_Reconnecting):
    """A Modbus TCP endpoint (a device, or an RS-485 gateway serving several unit ids)."""

    name: Ident
    kind: Literal["modbus_tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    timeout_ms: int = Field(default=1000, gt=0, le=60_000)
    inter_frame_ms: float = Field(default=0, ge=0, le=10_000, description="pause between two transactions")
    close_after_poll: bool = Field(default=False, description="drop the connection after every poll (device quirk)")
    reopen_after_timeouts: int = Field(
        default=3, ge=1, le=100, description="unanswered requests in a row, every unit silent, before dialling again"
    )


class ModbusRtuBus(_Reconnecting):
    """An RS-485 line on one of this gateway's serial ports: every unit id on it shares one scheduler."""

    name: Ident
    kind: Literal["modbus_rtu"]
    port: str = Field(min_length=1, description="e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    baudrate: int = Field(default=9600, ge=300, le=4_000_000)
    bytesize: ByteSize = 8
    parity: Parity = "N"
    stopbits: StopBits = 1
    timeout_ms: int = Field(default=1000, gt=0, le=60_000)
    inter_frame_ms: float | None = Field(
        default=None, ge=0, le=10_000, description="silence between transactions; default 3.5 characters"
    )


class SerialBus(_Reconnecting):
    """A serial port for a line protocol: polled Vaisala PWD sensors, or one streaming radar.

    Framing left unset comes from the devices' profile (the factory settings).
    """

    name: Ident
    kind: Literal["serial"]
    port: str = Field(min_length=1)
    baudrate: int | None = Field(default=None, ge=50, le=4_000_000)
    bytesize: ByteSize | None = None
    parity: Parity | None = None
    stopbits: StopBits | None = None
    inter_frame_ms: float = Field(default=0, ge=0, le=10_000, description="pause between two polls")


class BleBus(_Reconnecting):
    """A Bluetooth LE adapter, scanning passively for advertisements of the devices on it."""

    name: Ident
    kind: Literal["ble"]
    adapter: str | None = Field(default=None, pattern=r"^hci[0-9]{1,2}$", description="default: the system's")
    scanning_mode: Literal["active", "passive"] = "active"
    watchdog_s: float = Field(
        default=60.0, gt=0, le=3600, description="no advertisement from anyone for this long: restart scanning"
    )


BusConfig = Annotated[ModbusTcpBus | ModbusRtuBus | SerialBus | BleBus, Field(discriminator="kind")]
BUS_KINDS_FOR_PROTOCOL: dict[str, tuple[str, ...]] = {
    "modbus": ("modbus_tcp", "modbus_rtu"),
    "vaisala_pwd": ("serial",),
    "ti_mmwave": ("serial",),
    "bthome": ("ble",),
    "ruuvi": ("ble",),
}


class AssetConfig(_Strict):
    """What the device is as an asset: where, whose, which model."""

    location: str = Field(min_length=1)
    owner: str = Field(min_length=1)
    model: str | None = None
    serial: str | None = None
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)


_MAC = r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"


class DeviceConfig(Located):
    """A field device: a profile at an address on a bus.

    The address is the one its protocol uses: ``unit_id`` for Modbus, ``sensor_id`` for
    a Vaisala PWD, ``mac`` for BLE; a radar is alone on its port and has none.
    """

    id: Ident
    profile: str = Field(min_length=1)
    bus: str
    unit_id: int | None = Field(default=None, ge=1, le=247, description="Modbus unit id")
    sensor_id: str | None = Field(default=None, pattern=r"^[0-9A-Za-z]{1,2}$", description="Vaisala PWD id")
    mac: str | None = Field(default=None, pattern=_MAC, description="BLE address")
    key: SecretStr | None = Field(default=None, description="BTHome encryption key, 32 hex digits")
    key_file: ConfigPath | None = Field(default=None, description="file holding the BTHome key")
    poll_interval_s: float | None = Field(default=None, gt=0, le=86400)
    timeout_ms: int | None = Field(default=None, gt=0, le=60_000, description="default: the bus's")
    retries: int = Field(default=1, ge=0, le=5)
    backoff_max_s: float = Field(default=30.0, gt=0, le=3600)
    offline_after_failures: int = Field(default=2, ge=1, le=100)
    stale_after_s: float | None = Field(default=None, gt=0, le=86400 * 7, description="default: the profile's")
    tags: list[str] = Field(default_factory=list)
    asset: AssetConfig

    @field_validator("mac")
    @classmethod
    def _upper_mac(cls, mac: str | None) -> str | None:
        return mac.upper() if mac else mac

    @field_validator("key")
    @classmethod
    def _hex_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and not re.fullmatch(r"[0-9A-Fa-f]{32}", key.get_secret_value()):
            raise ValueError("a BTHome key is 32 hex digits (16 bytes)")
        return key

    @model_validator(mode="after")
    def _one_key(self) -> DeviceConfig:
        if self.key is not None and self.key_file is not None:
            raise ValueError("give key or key_file, not both")
        return self


PriorityName = Literal["alarm", "event", "telemetry"]


class _UplinkBase(Located):
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
    token_file: ConfigPath | None = Field(default=None, description="file holding a bearer token")
    timeout_s: float = Field(default=15.0, gt=0, le=600)
    rejected_retry_s: float = Field(default=300.0, gt=0, le=86400)


class MqttUplinkConfig(_UplinkBase):
    """An MQTT 5 broker (or cluster); batches are published with QoS 1 on a persistent session."""

    kind: Literal["mqtt"]
    host: str = Field(min_length=1)
    port: int = Field(default=8883, ge=1, le=65535)
    tls: bool = Field(default=True, description="TLS with server verification")
    ca_file: ConfigPath | None = Field(default=None, description="CA bundle to verify the broker (default: system CAs)")
    cert_file: ConfigPath | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: ConfigPath | None = Field(default=None, description="client certificate's private key")
    username: str | None = None
    password_file: ConfigPath | None = Field(default=None, description="file holding the password")
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


class SiteConfig(Located):
    """Everything one gateway runs."""

    gateway: GatewayConfig
    store: StoreConfig = StoreConfig()
    web: WebConfig = WebConfig()
    buses: list[BusConfig] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(default_factory=list)
    uplinks: list[UplinkConfig] = Field(default_factory=list)
    fleet: FleetConfig | None = Field(default=None, description="the fleet bootstrap (local file only)")
    include: list[str] = Field(default_factory=list, description="rule packs, relative to this file")
    rules: list[RuleConfig] = Field(default_factory=list)


def _duplicates(file: str, section: str, key: str, values: list[object]) -> list[ConfigProblem]:
    """``devices[3].id: duplicate of devices[0].id``: each repeat names the first one."""
    first: dict[object, int] = {}
    problems = []
    for i, value in enumerate(values):
        if value in first:
            where = f"{section}[{first[value]}].{key}"
            problems.append(ConfigProblem(file, f"{section}[{i}].{key}", f"duplicate of {where}"))
        else:
            first[value] = i
    return problems


def _unknown_bus(name: str, buses: list[str]) -> str:
    if not buses:
        return f"no bus named {name!r} (there are no [[buses]])"
    hint = did_you_mean(name, buses) or f" (the buses are {', '.join(map(repr, buses))})"
    return f"no bus named {name!r}{hint}"


def _cross_check(file: str, site: SiteConfig) -> tuple[list[ConfigProblem], dict[str, Profile]]:
    """What pydantic cannot see alone: references between sections, and profiles.

    A profile file with errors is reported once, each error with the profile's file and
    the key path in it, however many devices use it; each of those devices gets one line
    pointing to it.
    """
    problems = [
        *_duplicates(file, "buses", "name", [b.name for b in site.buses]),
        *_duplicates(file, "devices", "id", [d.id for d in site.devices]),
        *_duplicates(file, "uplinks", "name", [u.name for u in site.uplinks]),
    ]
    profile_problems: list[ConfigProblem] = []
    profiles: dict[str, Profile] = {}
    broken: dict[str, str] = {}  # profile name -> the problem its devices point to
    buses = {b.name: b for b in site.buses}
    for i, dev in enumerate(site.devices):
        if dev.bus not in buses:
            problems.append(ConfigProblem(file, f"devices[{i}].bus", _unknown_bus(dev.bus, list(buses))))
        if dev.profile not in profiles and dev.profile not in broken:
            try:
                path = profile_path(dev.profile)
            except ConfigError as exc:
                broken[dev.profile] = exc.problems[0].message
            else:
                try:
                    profiles[dev.profile] = load_profile(dev.profile)
                except ConfigError as exc:
                    broken[dev.profile] = f"profile {dev.profile!r} is invalid (see {path})"
                    profile_problems += exc.problems
        if dev.profile in broken:
            problems.append(ConfigProblem(file, f"devices[{i}].profile", broken[dev.profile]))
        elif dev.bus in buses:
            problems += _check_device(file, i, dev, buses[dev.bus], profiles[dev.profile])
    for key, label in (("unit_id", "unit id"), ("sensor_id", "sensor id"), ("mac", "MAC")):
        first: dict[tuple[str, object], int] = {}
        for i, dev in enumerate(site.devices):
            value = getattr(dev, key)
            if value is None:
                continue
            if (dev.bus, value) in first:
                seen = f"devices[{first[dev.bus, value]}].{key}"
                message = f"{label} {value} used twice on bus {dev.bus!r} (first at {seen})"
                problems.append(ConfigProblem(file, f"devices[{i}].{key}", message))
            else:
                first[dev.bus, value] = i
    for j, bus in enumerate(site.buses):
        if isinstance(bus, SerialBus):
            problems += _check_serial_bus(file, j, bus, site, profiles)
    for k, up in enumerate(site.uplinks):
        if isinstance(up, HttpUplinkConfig):
            problems += _check_url_credentials(file, k, up)
    return problems + profile_problems, profiles


def _check_url_credentials(file: str, k: int, up: HttpUplinkConfig) -> list[ConfigProblem]:
    """aiohttp sends credentials in the URL as basic auth: never beside a bearer token, only in Latin-1."""
    user, password = up.url.username, up.url.password
    if user is None and password is None:
        return []
    if up.token_file is not None:
        message = "a bearer token cannot go with credentials in url (user:password@): give one of them"
        return [ConfigProblem(file, f"uplinks[{k}].token_file", message)]
    try:
        unquote(user or "").encode("latin-1")
        unquote(password or "").encode("latin-1")
    except UnicodeEncodeError:
        message = "the user name and password in the URL must be Latin-1 text (HTTP basic auth)"
        return [ConfigProblem(file, f"uplinks[{k}].url", message)]
    return []


_ADDRESS_KEYS = {"modbus": "unit_id", "vaisala_pwd": "sensor_id", "bthome": "mac", "ruuvi": "mac"}


def _check_device(file: str, i: int, dev: DeviceConfig, bus: BusConfig, profile: Profile) -> list[ConfigProblem]:
    """Does this device fit its bus, and does it carry the address its protocol needs (and no other)?"""
    where = f"devices[{i}]"
    protocol = profile.protocol
    kinds = BUS_KINDS_FOR_PROTOCOL[protocol]
    if bus.kind not in kinds:
        need = " or ".join(kinds)
        return [
            ConfigProblem(
                file,
                f"{where}.bus",
                f"profile {dev.profile!r} speaks {protocol}; bus {bus.name!r} is {bus.kind}, not {need}",
            )
        ]
    problems = []
    needed = _ADDRESS_KEYS.get(protocol)
    if needed in ("unit_id", "mac") and getattr(dev, needed) is None:
        problems.append(ConfigProblem(file, f"{where}.{needed}", f"required for a {protocol} device"))
    for key in ("unit_id", "sensor_id", "mac"):
        if key != needed and getattr(dev, key) is not None:
            problems.append(ConfigProblem(file, f"{where}.{key}", f"not used by a {protocol} device"))
    if protocol != "bthome":
        for key in ("key", "key_file"):
            if getattr(dev, key) is not None:
                problems.append(ConfigProblem(file, f"{where}.{key}", "only BTHome devices take a key"))
    if protocol in ("bthome", "ruuvi") and dev.poll_interval_s is not None:
        problems.append(
            ConfigProblem(file, f"{where}.poll_interval_s", "BLE devices are not polled; see stale_after_s")
        )
    if protocol in ("modbus", "vaisala_pwd") and dev.stale_after_s is not None:
        problems.append(ConfigProblem(file, f"{where}.stale_after_s", "polled devices go offline by failed polls"))
    return problems


def serial_settings(bus: SerialBus, profile: SerialProfile) -> SerialSettings:
    """A serial bus's framing: what the bus sets, else the profile's factory settings."""
    given = {k: getattr(bus, k) for k in ("baudrate", "bytesize", "parity", "stopbits") if getattr(bus, k) is not None}
    return profile.serial.model_copy(update=given)


def _check_serial_bus(
    file: str, j: int, bus: SerialBus, site: SiteConfig, profiles: dict[str, Profile]
) -> list[ConfigProblem]:
    """One protocol per port; a streaming radar has the port to itself; one framing for all."""
    devices = [d for d in site.devices if d.bus == bus.name and d.profile in profiles]
    used = [profiles[d.profile] for d in devices]
    protocols = sorted({p.protocol for p in used})
    if len(protocols) > 1:
        return [ConfigProblem(file, f"buses[{j}]", f"one protocol per serial port, got {', '.join(protocols)}")]
    if protocols == ["ti_mmwave"] and len(devices) > 1:
        return [ConfigProblem(file, f"buses[{j}]", "a radar streams on its own port: one device only")]
    framings = {serial_settings(bus, p) for p in used if isinstance(p, PwdProfile | RadarProfile)}
    if len(framings) > 1:
        return [
            ConfigProblem(
                file,
                f"buses[{j}]",
                "the devices' profiles differ in serial settings: set baudrate, bytesize, parity, stopbits",
            )
        ]
    return []


def _resolve_paths(site: SiteConfig, base: Path, file: str) -> SiteConfig:
    """Paths made absolute against the config's folder; each part told where it was written."""
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
    devices = [
        d.model_copy(update={"key_file": (base / d.key_file).resolve()}) if d.key_file is not None else d
        for d in site.devices
    ]
    fleet = site.fleet.resolved(base, file) if site.fleet is not None else None
    web_files = ("tls_cert_file", "tls_key_file", "users_file", "api_token_file")
    web = site.web.model_copy(
        update={k: (base / getattr(site.web, k)).resolve() for k in web_files if getattr(site.web, k) is not None}
    )
    resolved = site.model_copy(
        update={"gateway": gateway, "uplinks": uplinks, "devices": devices, "web": web, "fleet": fleet}
    )
    resolved._file = file
    for section, parts in (("uplinks", uplinks), ("devices", devices)):
        for i, part in enumerate(parts):
            part._file, part._where = file, f"{section}[{i}]"
    return resolved


def _nul_problems(file: str, node: object, path: str = "") -> list[ConfigProblem]:
    """Strings holding a NUL: no name, path or host can, and the OS would refuse them later with a traceback."""
    if isinstance(node, str):
        return [ConfigProblem(file, path, "contains a NUL character")] if "\x00" in node else []
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in _nul_problems(file, value, f"{path}.{key}" if path else key)]
    if isinstance(node, list):
        return [p for i, value in enumerate(node) for p in _nul_problems(file, value, f"{path}[{i}]")]
    return []


def parse_config(data: dict[str, object], *, file: str = "<config>", base: Path | None = None) -> SiteConfig:
    """Validate a parsed config; raise ConfigError listing every problem."""
    nul = _nul_problems(file, data)
    if nul:
        raise ConfigError(nul)
    try:
        site = SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(file, exc, data=data, schema=SiteConfig)) from exc
    rules, include_problems = included_rules(site, base or Path.cwd(), file)
    site = site.model_copy(update={"rules": rules})
    problems, profiles = _cross_check(file, site)
    problems += include_problems + rule_problems(site, profiles)
    if problems:
        raise ConfigError(problems)
    return _resolve_paths(site, base or Path.cwd(), file)


def load_config(path: Path) -> SiteConfig:
    """Read, validate and resolve a config file."""
    return parse_config(read_toml(path), file=str(path), base=path.resolve().parent)


def profiles_for(site: SiteConfig) -> dict[str, Profile]:
    """The profile of every device, by profile name (the config is already validated)."""
    return {d.profile: load_profile(d.profile) for d in site.devices}


__all__ = [
    "AssetConfig",
    "BleBus",
    "BusConfig",
    "ConfigError",
    "DeviceConfig",
    "GatewayConfig",
    "HttpUplinkConfig",
    "ModbusRtuBus",
    "ModbusTcpBus",
    "MqttUplinkConfig",
    "SerialBus",
    "SiteConfig",
    "StoreConfig",
    "UplinkConfig",
    "WebConfig",
    "load_config",
    "parse_config",
    "profiles_for",
    "serial_settings",
]
