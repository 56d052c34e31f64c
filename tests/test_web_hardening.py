"""The status page under abuse: half-open floods, garbage bytes and foreign Host headers.

The flood tests run ``edgeagent run`` as a real child process with a 1,024 open-file
limit (the limit a gateway's systemd unit gives it), its stderr in a file so that the
log's growth can be measured, against a real pymodbus server and ingest endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edgeagent.config import WebConfig
from edgeagent.sim.ingest import IngestServer
from edgeagent.sim.water_level import WaterLevelSimulator
from edgeagent.web.app import host_allowed
from edgeagent.web.server import serve_status_page
from tests.agentproc import AgentProcess, NotifySocket
from tests.helpers import API_AUTH, site_toml, wait_until

AGENT_FD_LIMIT = 1024
FLOOD = 1100
REQUEST_TIMEOUT_S = 3.0
LOG_GROWTH_LIMIT = 100 * 1024
# A half request: the request line and one header, never the blank line that ends the head.
HALF_REQUEST = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n"

# Start the agent under the open-file limit without preexec_fn (not safe with threads running).
_LIMITED_START = (
    "import os, resource, sys\n"
    "limit = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'edgeagent', *sys.argv[2:]])\n"
)


class LoggedAgent(AgentProcess):
    """``edgeagent run`` under an open-file limit, its stderr written to a file that can be measured."""

    def __init__(self, config: Path, log_path: Path, fd_limit: int = AGENT_FD_LIMIT) -> None:
        super().__init__(config)
        self.log_path = log_path
        self.fd_limit = fd_limit

    async def start(self, *, notify_dir: Path | None = None) -> None:
        assert notify_dir is not None
        self.notify = NotifySocket(notify_dir / "notify.sock")
        self.env["NOTIFY_SOCKET"] = str(self.notify.path)
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _LIMITED_START,
                str(self.fd_limit),
                "run",
                "--config",
                str(self.config),
                env=self.env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_text(self, start: int = 0) -> str:
        with self.log_path.open("rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    def web_port(self) -> int:
        found = re.search(r"status page http://127\.0\.0\.1:(\d+)/", self.log_text())
        assert found, f"no status page address in the log:\n{self.log_text()[-2000:]}"
        return int(found.group(1))

    async def stop(self) -> tuple[int, str]:
        assert self.proc is not None
        self.proc.terminate()
        code = await asyncio.wait_for(self.proc.wait(), timeout=15)
        await self.close()
        return code, self.log_text()


def _config(tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer, web: str) -> Path:
    text = site_toml(state_dir=tmp_path / "state", modbus_port=sensor.port, ingest_url=ingest.url)
    assert "[web]\n" in text
    path = tmp_path / "site.toml"
    path.write_text(text.replace("[web]\n", "[web]\n" + web, 1))
    return path


@contextlib.asynccontextmanager
async def logged_agent(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer, web: str
) -> AsyncIterator[LoggedAgent]:
    agent = LoggedAgent(_config(tmp_path, sensor, ingest, web), tmp_path / "agent.log")
    await agent.start(notify_dir=tmp_path)
    try:
        await agent.wait_ready()
        await wait_until(lambda: "status page http://" in agent.log_text(), 10, "the running line in the log")
        yield agent
    finally:
        if agent.proc is not None and agent.proc.returncode is None:
            code, log = await agent.stop()
            assert code == 0, log[-3000:]


@pytest.fixture
def many_fds() -> Iterator[None]:
    """This process holds 1,100 sockets at once: raise its own soft limit (up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = FLOOD + 512
    if soft >= needed:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        reason = f"the hard open-file limit is {hard}; this test holds {FLOOD} sockets and needs {needed}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class HalfOpen:
    """A client that connects, sends half a request and then waits for the server to hang up."""

    def __init__(self) -> None:
        self.connected = False
        self.closed_by_server = False
        self._writer: asyncio.StreamWriter | None = None

    async def run(self, port: int) -> None:
        try:
            async with asyncio.timeout(60):
                reader, self._writer = await asyncio.open_connection("127.0.0.1", port)
                self.connected = True
                with contextlib.suppress(ConnectionError):
                    self._writer.write(HALF_REQUEST)
                    await self._writer.drain()
                await reader.read()  # returns b"" at EOF
            self.closed_by_server = True
        except ConnectionError:  # a reset is the server hanging up too
            self.closed_by_server = self.connected
        except TimeoutError:
            pass

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


@contextlib.asynccontextmanager
async def flood(port: int) -> AsyncIterator[list[HalfOpen]]:
    clients = [HalfOpen() for _ in range(FLOOD)]
    tasks = [asyncio.create_task(c.run(port), name=f"half-open-{i}") for i, c in enumerate(clients)]
    try:
        yield clients
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            c.close()


async def _fresh_status(port: int, timeout_s: float) -> dict[str, object]:
    """GET /api/status on a new connection, retrying while the page turns connections away."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    last: BaseException | None = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), headers=API_AUTH) as http,
                http.get(f"http://127.0.0.1:{port}/api/status", timeout=aiohttp.ClientTimeout(total=5)) as resp,
            ):
                assert resp.status == 200
                return json.loads(await resp.text())
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = exc
            await asyncio.sleep(0.1)
    raise AssertionError(f"the status page never answered a fresh client within {timeout_s} s: {last!r}")


def _polls_ok(status: dict[str, object]) -> int:
    devices = status["devices"]
    assert isinstance(devices, list)
    return int(devices[0]["polls_ok"])


async def _polls_beyond(port: int, count: int, timeout_s: float) -> int:
    """Ask the page (each time on a fresh connection) until the device has more than ``count`` good polls."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (polls := _polls_ok(await _fresh_status(port, timeout_s))) <= count:
        assert asyncio.get_running_loop().time() < deadline, f"polls_ok stuck at {polls}"
        await asyncio.sleep(0.1)
    return polls


async def test_half_open_flood_is_timed_out_and_capped_while_the_agent_keeps_working(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer, many_fds: None
) -> None:
    web = f"request_timeout_s = {REQUEST_TIMEOUT_S}\n"
    async with logged_agent(tmp_path, sensor, ingest, web) as agent:
        port = agent.web_port()
        await wait_until(lambda: len(ingest.records) >= 3, 10, "data upstream")
        log_before = agent.log_size()
        before = _polls_ok(await _fresh_status(port, 10))

        async with flood(port) as clients:
            await wait_until(lambda: all(c.connected for c in clients), 60, f"{FLOOD} connections")
            received = len(ingest.records)
            await wait_until(lambda: len(ingest.records) >= received + 20, 20, "readings upstream during the flood")
            # Served while all 1,100 sockets are still open on this side (once timed-out ones free a slot).
            during = await _polls_beyond(port, before, 4 * REQUEST_TIMEOUT_S + 10)
            await wait_until(
                lambda: all(c.closed_by_server for c in clients),
                REQUEST_TIMEOUT_S + 20,
                f"the agent to hang up on all {FLOOD} half-open connections",
            )
        await _polls_beyond(port, during, 10)
        grown = agent.log_size() - log_before
        new_log = agent.log_text(log_before)
    assert grown < LOG_GROWTH_LIMIT, f"the log grew by {grown} bytes:\n{new_log[:3000]}"
    assert "Traceback" not in new_log
    assert "refusing" in new_log, new_log[:3000]  # past the cap, counted in the log


async def test_accept_errors_at_the_open_file_limit_are_logged_once_with_a_count(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer, many_fds: None
) -> None:
    # A cap above the open-file limit: the agent runs out of descriptors and accept() fails.
    web = f"request_timeout_s = {REQUEST_TIMEOUT_S}\nmax_connections = 4096\n"
    async with logged_agent(tmp_path, sensor, ingest, web) as agent:
        port = agent.web_port()
        await wait_until(lambda: len(ingest.records) >= 3, 10, "data upstream")
        log_before = agent.log_size()
        async with flood(port) as clients:
            await wait_until(lambda: "cannot accept" in agent.log_text(log_before), 30, "accept() to fail")
            await wait_until(
                lambda: all(c.closed_by_server for c in clients),
                60,
                f"the agent to hang up on all {FLOOD} half-open connections",
            )
        await _fresh_status(port, 10)
        grown = agent.log_size() - log_before
        new_log = agent.log_text(log_before)
    assert grown < LOG_GROWTH_LIMIT, f"the log grew by {grown} bytes:\n{new_log[:3000]}"
    assert "Traceback" not in new_log
    assert len(re.findall("cannot accept", new_log)) <= 2, new_log[:3000]


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


async def test_garbage_requests_are_one_short_log_line(
    tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer
) -> None:
    async with logged_agent(tmp_path, sensor, ingest, f"request_timeout_s = {REQUEST_TIMEOUT_S}\n") as agent:
        port = agent.web_port()
        log_before = agent.log_size()
        garbage = [
            bytes(range(256)),
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\xab" * 200,  # a TLS hello
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: \x00\x01\r\n\r\n",
        ] * 5 + [b"\r\n\r\n\r\n"]  # blank lines: no request at all, closed by the request timeout
        for data in garbage:
            answer = await _raw(port, data)
            assert answer == b"" or answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), answer[:200]
        new_log = agent.log_text(log_before)
    lines = [line for line in new_log.splitlines() if line.strip()]
    assert len(lines) <= 1, new_log[:3000]
    assert all(len(line) < 200 for line in lines), lines
    assert "Traceback" not in new_log


async def test_a_foreign_host_name_gets_421(tmp_path: Path, sensor: WaterLevelSimulator, ingest: IngestServer) -> None:
    async with logged_agent(tmp_path, sensor, ingest, 'allowed_hosts = ["gateway-17.roads.example"]\n') as agent:
        port = agent.web_port()

        async def status_for(host: str) -> tuple[int, str]:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/api/status", headers={"Host": host, **API_AUTH}) as resp,
            ):
                return resp.status, await resp.text()

        code, text = await status_for("attacker.example")
        assert code == 421 and len(text) < 200 and "allowed_hosts" in text
        assert (await status_for("attacker.example:80"))[0] == 421
        assert (await status_for("127.0.0.1.attacker.example"))[0] == 421
        for host in (f"127.0.0.1:{port}", "127.0.0.1", "[::1]:8080", "localhost", f"localhost:{port}"):
            assert (await status_for(host))[0] == 200, host
        assert (await status_for(f"GATEWAY-17.roads.example:{port}"))[0] == 200


async def test_a_failing_handler_logs_its_traceback_once_then_a_count(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug in the status page")

    app = web.Application()
    app.router.add_get("/api/status", broken)
    runner = await serve_status_page(app, WebConfig(port=0), shutdown_timeout_s=1.0)
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                async with http.get(f"http://127.0.0.1:{port}/api/status") as resp:
                    assert resp.status == 500
    finally:
        await runner.cleanup()
    records = [r for r in caplog.records if r.name == "edgeagent.web.server"]
    assert [r.exc_info is not None for r in records] == [True, False], [r.getMessage() for r in records]
    assert "a bug in the status page" in caplog.text
    assert records[1].getMessage().endswith("(4 more in the last 60 s)")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("192.0.2.7", True),
        ("192.0.2.7:8080", True),
        ("[2001:db8::1]", True),
        ("[2001:db8::1]:8080", True),
        ("[fe80::1%eth0]:8080", True),
        ("localhost", True),
        ("LOCALHOST.:8080", True),
        ("gateway-17.roads.example", True),
        ("gateway-17.roads.example:80", True),
        ("", False),
        ("attacker.example", False),
        ("192.0.2.7.nip.io", False),
        ("192.0.2.7:http", False),
        ("[2001:db8::1", False),
        ("[attacker.example]:80", False),
        ("localhost:80:80", False),
        ("127.1", False),
    ],
)
def test_which_host_headers_are_allowed(host: str, allowed: bool) -> None:
    assert host_allowed(host, frozenset({"gateway-17.roads.example"})) is allowed


def test_with_no_allowed_hosts_only_addresses_and_localhost_are_answered() -> None:
    assert host_allowed("192.0.2.7:8443", frozenset()) and host_allowed("localhost", frozenset())
    assert not host_allowed("attacker.example", frozenset()), "no configured name must not mean every name"


@pytest.mark.parametrize("bad", ["http://gateway.example", "gateway.example:8080", "gate way", "-gw.example", ""])
def test_allowed_hosts_must_be_plain_host_names(bad: str) -> None:
    with pytest.raises(ValueError, match="allowed_hosts"):
        WebConfig(allowed_hosts=[bad])


def test_allowed_hosts_are_matched_without_case() -> None:
    assert WebConfig(allowed_hosts=["Gateway.Example."]).allowed_hosts == ["gateway.example"]
