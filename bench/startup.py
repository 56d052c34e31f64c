"""Startup to READY=1 with the demo site's config, measured the way systemd sees it.

    .venv/bin/python bench/startup.py [--runs 5] [--config config/demo.toml]

Each run spawns ``edgeagent run`` on a copy of the config (a fresh state folder, the
status page on a free port) with ``NOTIFY_SOCKET`` pointing at a datagram socket this
script reads, and times spawn -> READY=1 (what a Type=notify unit waits for), then
SIGTERM -> exit. The field device and upstream of the demo config are not running:
start-up must not wait for either. One untimed warm-up run fills the bytecode cache.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgeagent.config import load_config

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 30.0


def _write_config(source: Path, folder: Path) -> Path:
    """A copy with a fresh state folder and the status page on a free port; all else unchanged."""
    state = folder / "state"
    text = re.sub(r"(?ms)^(\[gateway\][^[]*?^state_dir\s*=\s*).*?$", rf'\g<1>"{state}"', source.read_text())
    text = re.sub(r"(?ms)^(\[web\][^[]*?^port\s*=\s*)\d+", r"\g<1>0", text)
    config = folder / "site.toml"
    config.write_text(text)
    site = load_config(config)
    assert site.gateway.state_dir == state and site.web.port == 0, "could not rewrite state_dir and web.port"
    return config


def measure_once(config: Path, folder: Path) -> tuple[float, float]:
    """Seconds from spawn to READY=1, and from SIGTERM to exit."""
    address = folder / "notify.sock"
    address.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        env = {**os.environ, "NOTIFY_SOCKET": str(address)}
        env.pop("WATCHDOG_USEC", None)
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeagent", "run", "--config", str(config), "--log-level", "WARNING"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            ready_s = _wait_ready(sock, proc, started)
            stopping = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=15)
            stop_s = time.monotonic() - stopping
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0:
            raise SystemExit(f"edgeagent exited with {code}: {proc.stderr.read().decode() if proc.stderr else ''}")
    return ready_s, stop_s


def _wait_ready(sock: socket.socket, proc: subprocess.Popen[bytes], started: float) -> float:
    while True:
        left = READY_TIMEOUT_S - (time.monotonic() - started)
        if left <= 0 or proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
            raise SystemExit(f"no READY=1 within {READY_TIMEOUT_S:.0f} s (exit {proc.poll()}): {err}")
        sock.settimeout(min(left, 0.5))
        try:
            message = sock.recv(4096)
        except TimeoutError:
            continue
        if b"READY=1" in message.split(b"\n"):
            return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--config", type=Path, default=REPO / "config" / "demo.toml")
    args = parser.parse_args()
    ready: list[float] = []
    stop: list[float] = []
    for run in range(args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="edgeagent-bench-") as tmp:
            folder = Path(tmp)
            ready_s, stop_s = measure_once(_write_config(args.config, folder), folder)
        if run == 0:
            print(f"warm-up: READY=1 after {ready_s:.3f} s")
            continue
        ready.append(ready_s)
        stop.append(stop_s)
        print(f"run {run}: READY=1 after {ready_s:.3f} s, stopped {stop_s:.3f} s after SIGTERM")
    for name, values in (("spawn -> READY=1", ready), ("SIGTERM -> exit", stop)):
        print(
            f"{name}: min {min(values):.3f} s, median {statistics.median(values):.3f} s,"
            f" max {max(values):.3f} s ({len(values)} runs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
