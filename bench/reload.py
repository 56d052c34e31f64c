"""How long `systemctl reload` takes to apply: 50 devices on 5 Modbus TCP buses.

The agent runs as a real process (``edgeagent run``) against five pymodbus servers of
ten unit ids each. Each round rewrites the config (one device's poll interval changes,
one device is added, one removed, alternately) and sends SIGHUP. Two figures per round:
the agent's own measure of the apply (logged as "reload applied ... in N ms"), and the
time from SIGHUP until /api/status shows the new config's hash (what an operator sees).
Target: under 0.5 s.
Run: python bench/reload.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import re
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.agentproc import AgentProcess
from tests.helpers import free_port

from edgeagent.sim.water_level import WaterLevelSimulator

BUSES = 5
UNITS = 10
API_TOKEN = "bench-api-token-0123456789"  # the page's /api needs it


def _config(state: Path, web: int, ports: list[int], round_: int) -> str:
    token = state.with_name("api-token")
    token.write_text(API_TOKEN + "\n")
    parts = [f'[gateway]\nid = "gw-bench"\nstate_dir = "{state}"\n\n[web]\nport = {web}\napi_token_file = "{token}"\n']
    for b, port in enumerate(ports):
        parts.append(
            f'[[buses]]\nname = "bus{b}"\nkind = "modbus_tcp"\nhost = "127.0.0.1"\nport = {port}\ntimeout_ms = 500\n'
        )
    for b in range(BUSES):
        for u in range(1, UNITS + 1):
            if (b, u) == (4, UNITS) and round_ % 2:
                continue  # removed in odd rounds
            interval = 1.0 if (b, u) == (0, 1) and round_ % 2 else 2.0
            parts.append(
                f'[[devices]]\nid = "d{b}-{u}"\nprofile = "generic_water_level"\nbus = "bus{b}"\nunit_id = {u}\n'
                f'poll_interval_s = {interval}\n[devices.asset]\nlocation = "bench"\nowner = "bench"\n'
            )
    if round_ % 2:  # added in odd rounds
        parts.append(
            '[[devices]]\nid = "d-extra"\nprofile = "generic_water_level"\nbus = "bus4"\nunit_id = 10\n'
            'poll_interval_s = 2.0\n[devices.asset]\nlocation = "bench"\nowner = "bench"\n'
        )
    return "\n".join(parts)


def _status_hash(web: int) -> str | None:
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{web}/api/status", headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=2) as resp:
            return json.load(resp)["gateway"]["config"]["hash"]
    except OSError:
        return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    sims = [WaterLevelSimulator(unit_ids=list(range(1, UNITS + 1))) for _ in range(BUSES)]
    for sim in sims:
        await sim.start()
    seen: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="edgeagent-reload-") as tmp:
            folder = Path(tmp)
            web = free_port()
            config = folder / "site.toml"
            ports = [s.port for s in sims]
            config.write_text(_config(folder / "state", web, ports, 0))
            agent = AgentProcess(config)
            await agent.start(notify_dir=folder)
            await agent.wait_ready()
            assert agent.proc is not None
            for round_ in range(1, args.rounds + 1):
                text = _config(folder / "state", web, ports, round_)
                expected = "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
                config.write_text(text)
                sent = time.monotonic()
                agent.proc.send_signal(signal.SIGHUP)
                while await asyncio.to_thread(_status_hash, web) != expected:
                    if time.monotonic() - sent > 10:
                        await agent.kill()
                        raise SystemExit(f"round {round_}: the reload was not applied within 10 s")
                seen.append(time.monotonic() - sent)
                await asyncio.sleep(0.5)
            code, stderr = await agent.terminate()
    finally:
        for sim in sims:
            await sim.stop()
    applied = [float(ms) / 1000 for ms in re.findall(r"reload applied \(config \S+\) in (\d+) ms", stderr)]
    print(f"reload with {BUSES * UNITS} devices on {BUSES} buses, {args.rounds} rounds (agent exit {code}):")
    for label, values in (("applied inside the agent", applied), ("SIGHUP -> /api/status", seen)):
        print(f"  {label:<25}: median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
