"""Run ``edgeagent run`` as a real child process, as systemd would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from edgeagent.store import view


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket that collects what the agent says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._read(), name="notify-socket")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self._sock, 4096)
            self.messages.extend(data.decode().split("\n"))

    def has(self, field: str) -> bool:
        return field in self.messages

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._sock.close()


class AgentProcess:
    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.notify: NotifySocket | None = None

    async def start(self, *, notify_dir: Path | None = None) -> None:
        if notify_dir is not None:
            self.notify = NotifySocket(notify_dir / f"notify-{id(self)}.sock")
            self.env["NOTIFY_SOCKET"] = str(self.notify.path)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgeagent",
            "run",
            "--config",
            str(self.config),
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        assert self.notify is not None and self.proc is not None
        deadline = time.monotonic() + timeout_s
        while not self.notify.has("READY=1"):
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"agent never became ready (exit code {self.proc.returncode})")
            await asyncio.sleep(0.02)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self.close()

    async def close(self) -> None:
        if self.notify is not None:
            await self.notify.close()
            self.notify = None

    async def abort(self) -> str:
        """SIGKILL if still running; return what it logged (for a failing test's report)."""
        assert self.proc is not None and self.proc.stderr is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        stderr = await asyncio.wait_for(self.proc.stderr.read(), timeout=10)
        await self.proc.wait()
        await self.close()
        return stderr.decode(errors="replace")

    @contextlib.asynccontextmanager
    async def guarded(self) -> AsyncIterator[AgentProcess]:
        """On a failure inside, kill the agent and print the end of its log, so the report shows why."""
        try:
            yield self
        except BaseException:
            if self.proc is not None and (self.proc.returncode is None or self.notify is not None):
                print("---- agent log (last 6000 characters) ----")
                print((await self.abort())[-6000:])
            raise

    async def terminate(self, timeout_s: float = 10.0) -> tuple[int, str]:
        """SIGTERM; return (exit code, stderr)."""
        assert self.proc is not None and self.proc.stderr is not None
        self.proc.send_signal(signal.SIGTERM)
        stderr = await asyncio.wait_for(self.proc.stderr.read(), timeout=timeout_s)
        code = await asyncio.wait_for(self.proc.wait(), timeout=timeout_s)
        await self.close()
        return code, stderr.decode()


def read_store(path: Path) -> dict[int, tuple[int, str, str, float | str | None]]:
    """Every reading in a buffer (its file and its tail): seq -> (ts_ms, device/point, unit, value). Read-only."""
    return {
        seq: (round(r.ts * 1000), f"{r.device}/{r.point}", r.unit, r.value) for seq, r in view.readings(path).items()
    }


def store_last_seq(path: Path) -> int:
    """The highest sequence number ever given: the counter kept in the file, a newer block, or the tail."""
    return view.last_seq(path)
