"""What each library costs in resident memory once imported, on top of the agent's floor.

    .venv-test/bin/python bench/import_cost.py [--repeat 3]

Each figure comes from a fresh interpreter (so nothing is shared by accident): VmRSS
after importing the floor (what ``edgeagent run`` loads for every site: the CLI, the
config models with pydantic, the agent, the store), then after importing one library
more; the difference is that library's cost for a site that uses it (median of
``--repeat`` interpreters). Which site kind loads which library is what
``bench/site_rss.py`` prints; together they say where a site's RSS goes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

FLOOR = ["edgeagent.cli", "edgeagent.agent", "edgeagent.config", "edgeagent.store", "edgeagent.sync.worker"]
# (what, modules): what a site pays for when its config uses it.
LIBRARIES = [
    ("status page server (aiohttp.web)", ["aiohttp.web", "edgeagent.web.app"]),
    ("HTTP uplink (aiohttp client)", ["aiohttp.client", "edgeagent.uplinks.http"]),
    ("MQTT uplink (aiomqtt, paho)", ["aiomqtt", "edgeagent.uplinks.mqtt"]),
    ("Modbus (pymodbus)", ["pymodbus.client", "edgeagent.transports.modbus"]),
    ("serial lines (pyserial)", ["serial", "edgeagent.transports.serial"]),
    ("BLE (bleak)", ["bleak", "edgeagent.transports.ble"]),
    ("encrypted BTHome (cryptography)", ["cryptography.hazmat.primitives.ciphers.aead"]),
    ("schema steps (sqlite-utils)", ["sqlite_utils"]),
]

PROBE = """
import importlib, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
base = rss()
for m in {floor!r}:
    importlib.import_module(m)
floor = rss()
for m in {extra!r}:
    importlib.import_module(m)
print(json.dumps({{"python": base, "floor": floor, "with": rss(), "modules": len(sys.modules)}}))
"""


def probe(extra: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(floor=FLOOR, extra=extra)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"importing {extra} failed:\n{out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    base = [probe([]) for _ in range(args.repeat)]
    python = statistics.median(b["python"] for b in base)
    floor = statistics.median(b["floor"] for b in base)
    print(f"python {sys.version.split()[0]}; VmRSS MB, median of {args.repeat} fresh interpreters")
    print()
    print("| what | MB |")
    print("|---|---|")
    print(f"| the interpreter alone | {python:.1f} |")
    print(f"| the floor: {', '.join(FLOOR)} | +{floor - python:.1f} (= {floor:.1f}) |")
    for what, modules in LIBRARIES:
        runs = [probe(modules) for _ in range(args.repeat)]
        cost = statistics.median(r["with"] - r["floor"] for r in runs)
        print(f"| {what} | +{cost:.1f} |")


if __name__ == "__main__":
    main()
