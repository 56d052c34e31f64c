"""check-config and run agree: what run would refuse, check-config refuses first, naming the same key path.

Each row is a config file given to two real processes, ``edgeagent check-config F`` and
``edgeagent run --config F``. A broken config makes both exit 2 (the code the systemd
unit does not restart) and name the same ``file: key.path``; run must not get as far as
creating the buffer. A good but unusual config passes check-config, and run starts
(it logs that it runs) and stops cleanly on SIGTERM.

``MESSAGES`` is the same check for what the messages say: a value of the wrong type, a
duplicate, a misspelling (with its suggestion), a broken profile of the site's own
(named once, by its file and the key path in it), each word for word in both outputs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edgeagent.profiles import DRIVERS_PATH_ENV, drivers_dir
from tests.helpers import free_port, site_toml
from tests.mosquitto import make_pki

CLOSED = free_port()  # nothing listens here: the bus and the uplinks are simply unreachable
SETTLE_S = 60.0  # longest a process may take to refuse, or to say that it runs
KEY_HEX = "231d39c1d7cc1ab1aee224cd096db932"
PRIVILEGED_PORT = 80
# The systemd unit gives the agent no capabilities; as root, a child is started without this one.
NO_BIND_CAPABILITY = ["setpriv", "--bounding-set", "-net_bind_service", "--inh-caps", "-net_bind_service"]


def _site(
    tmp: Path,
    *,
    replace: dict[str, str] | None = None,
    state_dir: str = "state",
    web_port: int | None = None,
    uplink: str = "",
    tail: str = "",
    files: dict[str, str | bytes] | None = None,
    folders: tuple[str, ...] = (),
) -> Path:
    """The test site (one Modbus TCP bus, one HTTP uplink, both unreachable) with changes; its path.

    ``files`` and ``folders`` are made beside it first (relative paths in a config are too).
    """
    for name, content in (files or {}).items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    for name in folders:
        (tmp / name).mkdir(parents=True)
    text = site_toml(
        state_dir=Path(state_dir),
        modbus_port=CLOSED,
        ingest_url=f"http://127.0.0.1:{CLOSED}/ingest",
        web_port=free_port() if web_port is None else web_port,
        extra=uplink,
    )
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp / "site.toml"
    path.write_text(text + tail)
    return path


def _config_file(tmp: Path, content: bytes) -> Path:
    path = tmp / "site.toml"
    path.write_bytes(content)
    return path


TOKEN = 'token_file = "secrets/platform.token"'


def _token(tmp: Path, content: str | bytes, *, url: str | None = None) -> Path:
    """The site with an HTTP bearer token file holding ``content``."""
    replace = {f"http://127.0.0.1:{CLOSED}/ingest": url} if url else {}
    return _site(tmp, replace=replace, uplink=TOKEN, files={"secrets/platform.token": content})


def _ble(key_file: str) -> str:
    """A BLE bus with an encrypted BTHome manhole sensor: devices[1]."""
    return f"""
[[buses]]
name = "radio"
kind = "ble"
[[devices]]
id = "manhole"
profile = "bthome_manhole_water"
bus = "radio"
mac = "54:48:E6:8F:80:A5"
key_file = "{key_file}"
[devices.asset]
location = "Viaduct drain 3"
owner = "tests"
"""


def _mqtt(*, tls: bool, **keys: str) -> str:
    """A second uplink, to an MQTT broker that is not there: uplinks[1]."""
    lines = "".join(f'{key} = "{value}"\n' for key, value in keys.items())
    return f"""
[[uplinks]]
name = "broker"
kind = "mqtt"
host = "127.0.0.1"
port = {CLOSED}
retry_min_ms = 50
retry_max_ms = 500
tls = {str(tls).lower()}
{lines}"""


def _tls(tmp: Path, **changes: str) -> str:
    """The MQTT uplink with TLS and a client certificate; a change names another file of the PKI, or a path.

    The PKI: a CA and a client certificate with its key, that key encrypted, and the key
    of another certificate.
    """
    pki = make_pki(tmp / "pki")
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), password=None)
    encrypted = tmp / "pki" / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    named = {"ca": pki.ca_cert, "key": pki.client_key, "encrypted_key": encrypted, "other_key": pki.server_key}
    keys = {"ca_file": str(pki.ca_cert), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    for key_name, which in changes.items():
        keys[key_name] = str(named.get(which, which))
    return _mqtt(tls=True, **keys)


@dataclass(frozen=True)
class Broken:
    """A config both commands refuse; ``expected`` (after ``file: ``) is in both outputs.

    Each line of ``once`` is in both outputs exactly once. In both, ``{tmp}`` stands for the
    test's folder, where ``drivers/`` is the site's own profile folder (EDGEAGENT_DRIVERS_PATH).
    """

    build: Callable[[Path], Path]
    expected: str
    privileged: bool = False
    once: tuple[str, ...] = ()


BROKEN: dict[str, Broken] = {
    # The cases tests/test_config.py checks in process.
    "wrong type": Broken(
        lambda t: _site(t, replace={"poll_interval_s = 0.1": 'poll_interval_s = "fast"'}),
        'devices[0].poll_interval_s: expected a number, got "fast" (a string)',
    ),
    "unknown key": Broken(
        lambda t: _site(t, replace={"unit_id = 1": "unit_id = 1\npoll_intreval_s = 3"}),
        "devices[0].poll_intreval_s: unknown key; did you mean 'poll_interval_s'?",
    ),
    "missing profile": Broken(
        lambda t: _site(t, replace={'profile = "generic_water_level"': 'profile = "no_such_sensor"'}),
        "devices[0].profile: no such profile 'no_such_sensor' (`edgeagent profiles` lists them)",
    ),
    "bus port out of range": Broken(lambda t: _site(t, replace={f"port = {CLOSED}": "port = 70000"}), "buses[0].port:"),
    "no such bus": Broken(
        lambda t: _site(t, replace={'bus = "flood"': 'bus = "nowhere"'}),
        "devices[0].bus: no bus named 'nowhere' (the buses are 'flood')",
    ),
    "unknown uplink kind": Broken(
        lambda t: _site(t, replace={'kind = "http"': 'kind = "carrier-pigeon"'}), "uplinks[0].kind:"
    ),
    "web port out of range": Broken(lambda t: _site(t, web_port=70000), "web.port:"),
    "budget too small": Broken(lambda t: _site(t, tail="[store.event]\nmax_bytes = 1000\n"), "store.event.max_bytes:"),
    # The config file itself.
    "config not UTF-8": Broken(lambda t: _config_file(t, b"\xff\xfe[gateway]\n"), "not UTF-8 text"),
    "config not TOML": Broken(lambda t: _config_file(t, b"[gateway\nid = 1\n"), "invalid TOML"),
    "config missing": Broken(lambda t: t / "site.toml", "cannot read: No such file or directory"),
    "NUL in a string": Broken(
        lambda t: _site(t, replace={'location = "test bench': 'location = "test\\u0000bench'}),
        "devices[0].asset.location:",
    ),
    # Uplinks: the token file, credentials in the URL, the MQTT password and TLS files.
    "token and URL credentials": Broken(
        lambda t: _token(t, "s3cret\n", url=f"http://gw:pw@127.0.0.1:{CLOSED}/ingest"), "uplinks[0].token_file:"
    ),
    "URL credentials not Latin-1": Broken(
        lambda t: _site(t, replace={"http://127.0.0.1": "http://gw:\u20ac@127.0.0.1"}), "uplinks[0].url:"
    ),
    "token file missing": Broken(lambda t: _site(t, uplink=TOKEN), "uplinks[0].token_file:"),
    "token file a folder": Broken(
        lambda t: _site(t, uplink=TOKEN, folders=("secrets/platform.token",)), "uplinks[0].token_file:"
    ),
    "token file empty": Broken(lambda t: _token(t, "\n"), "uplinks[0].token_file:"),
    "token file not UTF-8": Broken(lambda t: _token(t, b"\xff\xfe\x00\x01"), "uplinks[0].token_file:"),
    "token file two lines": Broken(lambda t: _token(t, "s3cret\nsecond line\n"), "uplinks[0].token_file:"),
    "token with a control character": Broken(lambda t: _token(t, "s3\x01cret\n"), "uplinks[0].token_file:"),
    "mqtt password file missing": Broken(
        lambda t: _site(t, tail=_mqtt(tls=False, username="gw", password_file="missing.pw")),
        "uplinks[1].password_file:",
    ),
    "mqtt CA file missing": Broken(lambda t: _site(t, tail=_tls(t, ca_file="no-ca.pem")), "uplinks[1].ca_file:"),
    "mqtt CA file not PEM": Broken(lambda t: _site(t, tail=_tls(t, ca_file="key")), "uplinks[1].ca_file:"),
    "mqtt cert file not PEM": Broken(lambda t: _site(t, tail=_tls(t, cert_file="key")), "uplinks[1].cert_file:"),
    "mqtt key file encrypted": Broken(
        lambda t: _site(t, tail=_tls(t, key_file="encrypted_key")), "uplinks[1].key_file:"
    ),
    "mqtt key of another cert": Broken(lambda t: _site(t, tail=_tls(t, key_file="other_key")), "uplinks[1].key_file:"),
    # Devices.
    "BTHome key file missing": Broken(lambda t: _site(t, tail=_ble("keys/mh.key")), "devices[1].key_file:"),
    "BTHome key file malformed": Broken(
        lambda t: _site(t, tail=_ble("keys/mh.key"), files={"keys/mh.key": "not-a-key\n"}), "devices[1].key_file:"
    ),
    # The state folder and the status page.
    "state_dir is a file": Broken(lambda t: _site(t, files={"state": "x"}), "gateway.state_dir:"),
    "state_dir cannot be created": Broken(
        lambda t: _site(t, state_dir="blocker/state", files={"blocker": "x"}), "gateway.state_dir:"
    ),
    "buffer file is a folder": Broken(lambda t: _site(t, folders=("state/buffer.sqlite",)), "gateway.state_dir:"),
    "web host with a port": Broken(
        lambda t: _site(t, replace={"[web]\n": '[web]\nhost = "127.0.0.1:8080"\n'}), "web.host:"
    ),
    "privileged web port": Broken(lambda t: _site(t, web_port=PRIVILEGED_PORT), "web.port:", privileged=True),
}


def _device(device_id: str, unit_id: int, profile: str = "generic_water_level") -> str:
    """One more water-level sensor on the test site's bus (devices[1] and on)."""
    return f"""
[[devices]]
id = "{device_id}"
profile = "{profile}"
bus = "flood"
unit_id = {unit_id}
[devices.asset]
location = "test bench"
owner = "tests"
"""


def _profile(tmp: Path, name: str, changes: dict[str, str]) -> str:
    """A site's own copy of the water-level profile with ``changes``: drivers/<name>.toml."""
    text = (drivers_dir() / "generic_water_level.toml").read_text()
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp / "drivers" / f"{name}.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return name


def _own_profile_site(tmp: Path, changes: dict[str, str]) -> Path:
    """The test site with both its devices on a site's own profile with ``changes``."""
    name = _profile(tmp, "level_copy", changes)
    return _site(
        tmp,
        replace={'profile = "generic_water_level"': f'profile = "{name}"'},
        tail=_device("wl-02", 2, profile=name),
    )


SITE_PROFILE = "{tmp}/drivers/level_copy.toml"
NO_UNIT = {'unit = "mm"': ""}  # the one point's unit
ADDRESS_TEXT = {"address = 0x0006": 'address = "6"'}

MESSAGES: dict[str, Broken] = {
    # A value of the wrong TOML type is an error, not converted.
    "unit_id a boolean": Broken(
        lambda t: _site(t, replace={"unit_id = 1": "unit_id = true"}),
        "devices[0].unit_id: expected an integer, got true (a boolean)",
    ),
    "bus port a string": Broken(
        lambda t: _site(t, replace={f"port = {CLOSED}": 'port = "502"'}),
        'buses[0].port: expected an integer, got "502" (a string)',
    ),
    "timeout_ms a float": Broken(
        lambda t: _site(t, replace={"timeout_ms = 500": "timeout_ms = 1500.0"}),
        "buses[0].timeout_ms: expected an integer, got 1500.0 (a float)",
    ),
    "poll interval a boolean": Broken(
        lambda t: _site(t, replace={"poll_interval_s = 0.1": "poll_interval_s = true"}),
        "devices[0].poll_interval_s: expected a number, got true (a boolean)",
    ),
    "web enabled a string": Broken(
        lambda t: _site(t, replace={"[web]\n": '[web]\nenabled = "yes"\n'}),
        'web.enabled: expected true or false, got "yes" (a string)',
    ),
    "gateway id an integer": Broken(
        lambda t: _site(t, replace={'id = "gw-test"': "id = 17"}), "gateway.id: expected a string, got 17 (an integer)"
    ),
    "tags a string": Broken(
        lambda t: _site(t, replace={"tags = []": 'tags = "drainage"'}),
        'devices[0].tags: expected an array, got "drainage" (a string)',
    ),
    # Duplicates name both positions.
    "duplicate device id": Broken(
        lambda t: _site(t, tail=_device("wl-01", 2)), "devices[1].id: duplicate of devices[0].id"
    ),
    "duplicate bus name": Broken(
        lambda t: _site(t, tail='[[buses]]\nname = "flood"\nkind = "modbus_tcp"\nhost = "127.0.0.1"\n'),
        "buses[1].name: duplicate of buses[0].name",
    ),
    "duplicate uplink name": Broken(
        lambda t: _site(t, tail=f'[[uplinks]]\nname = "platform"\nkind = "http"\nurl = "http://127.0.0.1:{CLOSED}/"\n'),
        "uplinks[1].name: duplicate of uplinks[0].name",
    ),
    "duplicate unit id": Broken(
        lambda t: _site(t, tail=_device("wl-02", 1)),
        "devices[1].unit_id: unit id 1 used twice on bus 'flood' (first at devices[0].unit_id)",
    ),
    # Misspellings get the closest name there is.
    "misspelt bus name": Broken(
        lambda t: _site(t, replace={'bus = "flood"': 'bus = "flod"'}),
        "devices[0].bus: no bus named 'flod'; did you mean 'flood'?",
    ),
    "misspelt profile": Broken(
        lambda t: _site(t, replace={'profile = "generic_water_level"': 'profile = "generic_water_levle"'}),
        "devices[0].profile: no such profile 'generic_water_levle'; did you mean 'generic_water_level'?",
    ),
    "misspelt bus key": Broken(
        lambda t: _site(t, replace={"timeout_ms = 500": "tiemout_ms = 500"}),
        "buses[0].tiemout_ms: unknown key; did you mean 'timeout_ms'?",
    ),
    "misspelt uplink key": Broken(
        lambda t: _site(t, uplink='token_flie = "platform.token"'),
        "uplinks[0].token_flie: unknown key; did you mean 'token_file'?",
    ),
    "misspelt section": Broken(
        lambda t: _site(t, replace={"[store]": "[stores]"}), "stores: unknown key; did you mean 'store'?"
    ),
    "misspelt asset key": Broken(
        lambda t: _site(t, replace={'owner = "tests"': 'ownr = "tests"'}),
        "devices[0].asset.ownr: unknown key; did you mean 'owner'?",
    ),
    "misspelt class budget key": Broken(
        lambda t: _site(t, tail="[store.event]\nmax_byte = 1048576\n"),
        "store.event.max_byte: unknown key; did you mean 'max_bytes'?",
    ),
    "misspelt bus kind": Broken(
        lambda t: _site(t, replace={'kind = "modbus_tcp"': 'kind = "modbus-tcp"'}),
        "buses[0].kind: Input should be 'modbus_tcp', 'modbus_rtu', 'serial' or 'ble'; did you mean 'modbus_tcp'?",
    ),
    # A site's own profile with errors: each named once, in its file, whatever uses it.
    "broken site profile used twice": Broken(
        lambda t: _own_profile_site(t, {**NO_UNIT, **ADDRESS_TEXT}),
        f"devices[0].profile: profile 'level_copy' is invalid (see {SITE_PROFILE})",
        once=(
            f"{{config}}: devices[1].profile: profile 'level_copy' is invalid (see {SITE_PROFILE})",
            f"{SITE_PROFILE}: points[0].unit: Field required",
            f'{SITE_PROFILE}: points[0].address: expected an integer, got "6" (a string)',
        ),
    ),
    "misspelt key in a site profile": Broken(
        lambda t: _own_profile_site(t, {"max_gap_registers = 4": "max_gap_register = 4"}),
        f"devices[1].profile: profile 'level_copy' is invalid (see {SITE_PROFILE})",
        once=(f"{SITE_PROFILE}: max_gap_register: unknown key; did you mean 'max_gap_registers'?",),
    ),
}

GOOD: dict[str, Callable[[Path], Path]] = {
    "some keys of the class budgets": lambda t: _site(
        t,
        tail="[store.event]\nmax_bytes = 1000000\n[store.alarm]\npolicy = 'drop_oldest'\n"
        "[store.telemetry]\npolicy = 'thin'\nthin_keep_every = 3\n",
    ),
    "token file with a trailing newline": lambda t: _token(t, "s3cret-token\n"),
    "integers where floats are expected": lambda t: _site(
        t, replace={"poll_interval_s = 0.1": "poll_interval_s = 1", "timeout_s = 2.0": "timeout_s = 2"}
    ),
    "Latin-1 URL credentials without a token": lambda t: _site(
        t, replace={"http://127.0.0.1": "http://gw:p%C3%A4ss@127.0.0.1"}
    ),
    "state_dir not there yet": lambda t: _site(t, state_dir="new/deeper/state"),
    "web host by name": lambda t: _site(t, replace={"[web]\n": '[web]\nhost = "localhost"\n'}),
    "BTHome key file": lambda t: _site(t, tail=_ble("keys/mh.key"), files={"keys/mh.key": KEY_HEX + "\n"}),
    "mqtt with client certificate and password": lambda t: _site(
        t, tail=_tls(t, username="gw", password_file="broker.pw"), files={"broker.pw": "pw\n"}
    ),
}


async def _exec(*args: str, prefix: list[str], env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "edgeagent",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def _check_config(config: Path, prefix: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await _exec("check-config", str(config), prefix=prefix, env=env)
    async with asyncio.timeout(SETTLE_S):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode(errors="replace")


async def _run(config: Path, prefix: list[str], env: dict[str, str] | None = None) -> tuple[int, str, bool]:
    """``edgeagent run``: its exit code, its output, and whether it got as far as running.

    A run that says it runs is stopped with SIGTERM (its exit code is then that of the stop).
    """
    proc = await _exec("run", "--config", str(config), prefix=prefix, env=env)
    assert proc.stderr is not None
    lines: list[str] = []
    running = False
    try:
        async with asyncio.timeout(SETTLE_S):
            while line := (await proc.stderr.readline()).decode(errors="replace"):
                lines.append(line)
                if " running: " in line:
                    running = True
                    break
            if running:
                proc.send_signal(signal.SIGTERM)
                lines.append((await proc.stderr.read()).decode(errors="replace"))
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, "".join(lines), running


def _capability_prefix() -> list[str]:
    """How to start a child that may not bind privileged ports, or skip where there is none."""
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to start a child without CAP_NET_BIND_SERVICE")
        return NO_BIND_CAPABILITY
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if start <= PRIVILEGED_PORT:
        pytest.skip(f"every user may bind port {PRIVILEGED_PORT} on this machine")
    return []


@pytest.mark.parametrize("row", list(BROKEN.values()), ids=list(BROKEN))
async def test_both_commands_refuse_with_the_same_key_path(tmp_path: Path, row: Broken) -> None:
    prefix = _capability_prefix() if row.privileged else []
    config = row.build(tmp_path)
    (check_code, check_out), (run_code, run_out, running) = await asyncio.gather(
        _check_config(config, prefix), _run(config, prefix)
    )
    named = f"{config}: {row.expected}"
    assert (check_code, named in check_out) == (2, True), check_out
    assert not running, f"run started on a config it should refuse:\n{run_out}"
    assert (run_code, named in run_out) == (2, True), run_out
    assert "Traceback" not in check_out + run_out
    assert not (tmp_path / "state" / "buffer.sqlite").is_file(), "run touched the buffer"


@pytest.mark.parametrize("row", list(MESSAGES.values()), ids=list(MESSAGES))
async def test_both_commands_say_the_same_thing_about_a_broken_config(tmp_path: Path, row: Broken) -> None:
    config = row.build(tmp_path)
    env = {**os.environ, DRIVERS_PATH_ENV: str(tmp_path / "drivers")}
    (check_code, check_out), (run_code, run_out, running) = await asyncio.gather(
        _check_config(config, [], env), _run(config, [], env)
    )
    named = f"{config}: {row.expected.replace('{tmp}', str(tmp_path))}"
    once = [line.replace("{tmp}", str(tmp_path)).replace("{config}", str(config)) for line in row.once]
    assert (check_code, named in check_out) == (2, True), check_out
    assert not running, f"run started on a config it should refuse:\n{run_out}"
    assert (run_code, named in run_out) == (2, True), run_out
    for line in once:
        assert (check_out.count(line), run_out.count(line)) == (1, 1), f"{line}\n{check_out}\n{run_out}"
    assert "Traceback" not in check_out + run_out


@pytest.mark.parametrize("build", list(GOOD.values()), ids=list(GOOD))
async def test_a_good_config_passes_the_check_and_runs(tmp_path: Path, build: Callable[[Path], Path]) -> None:
    config = build(tmp_path)
    check_code, check_out = await _check_config(config, [])
    assert (check_code, check_out.strip()) == (0, "OK")
    run_code, run_out, running = await _run(config, [])
    assert running, run_out
    assert run_code == 0, run_out
    assert "Traceback" not in run_out


def test_preflight_checks_the_files_the_agent_opens() -> None:
    from edgeagent import agent, preflight

    assert preflight.STORE_FILES[0] == agent.STORE_FILE


async def test_a_secret_file_changed_after_the_check_is_refused_at_start_with_the_same_key_path(
    tmp_path: Path,
) -> None:
    from edgeagent.config import load_config
    from edgeagent.errors import ConfigError
    from edgeagent.preflight import check_site
    from edgeagent.uplinks.http import HttpUplink
    from edgeagent.uplinks.mqtt import MqttUplink

    tail = _mqtt(tls=False, username="gw", password_file="broker.pw")
    config = _token(tmp_path, "s3cret\n")
    config.write_text(config.read_text() + tail)
    (tmp_path / "broker.pw").write_text("pw\n")
    site = load_config(config)
    check_site(site)
    (tmp_path / "secrets" / "platform.token").write_text("")
    (tmp_path / "broker.pw").unlink()
    http, mqtt = HttpUplink(site.uplinks[0], "gw"), MqttUplink(site.uplinks[1], "gw")
    with pytest.raises(ConfigError) as token:
        await http.start()
    with pytest.raises(ConfigError) as password:
        await mqtt.start()
    await http.close()
    await mqtt.close()
    assert str(token.value).startswith(f"{config}: uplinks[0].token_file: token file ")
    assert str(token.value).endswith(" is empty")
    assert str(password.value).startswith(f"{config}: uplinks[1].password_file: cannot read password file ")
