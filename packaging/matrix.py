"""Build, lint, install and run the package for every target, and print one table.

    packaging/matrix.py [--only ARCH/DIST ...] [--out DIR] [--python PY]

For each of amd64, arm64 and armhf on Debian 12 (bookworm) and 13 (trixie): build with
``packaging/build-deb.sh``, run ``lintian`` on the result (errors, warnings, overridden
tags), then ``tests/systemd/test_foreign_arch.py`` on it, which installs it with ``dpkg -i``
in a minimal Debian of that architecture and release (under qemu-user when foreign) and
runs ``--version``, ``check-config`` and the demo there. Run as root, after
``packaging/ci-deps.sh``. The trees are cached (``/var/cache/edgeagent-test``), and armhf's
compiled cffi too (``~/.cache/edgeagent-build``): a first run takes most of an hour on two
cores, later runs minutes. Exit status 0 only when every target passes every step.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHES = ("amd64", "arm64", "armhf")
DISTS = ("bookworm", "trixie")
TEST = "tests/systemd/test_foreign_arch.py"
# Which tests make up each column.
INSTALL_TESTS = ("test_dpkg_installs_it_with_only_its_depends", "test_every_compiled_module_loads")
DEMO_TESTS = ("test_version_and_the_shipped_example_config", "test_demo_serves_its_page_and_delivers_readings")


@dataclass
class Row:
    """One target's outcome; ``None`` where a step did not run."""

    arch: str
    dist: str
    build: bool | None = None
    deb: Path | None = None
    lintian: tuple[int, int, int] | None = None
    install: bool | None = None
    demo: bool | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return bool(self.build and self.lintian and self.lintian[:2] == (0, 0) and self.install and self.demo)


def build(row: Row, out: Path, python: str) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [str(REPO / "packaging" / "build-deb.sh"), "--arch", row.arch, "--dist", row.dist, "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": python},
    )
    row.seconds["build"] = time.monotonic() - started
    row.build = done.returncode == 0
    if row.build:
        row.deb = Path(done.stdout.strip().splitlines()[-1])
        said = done.stderr.splitlines()
        row.notes += [line.removeprefix("build-deb.sh: ") for line in said if "wheel on PyPI" in line]
    else:
        row.notes.append(f"build failed: {done.stderr.strip().splitlines()[-1:]}")


def lint(row: Row) -> None:
    """Counts of E: and W: hints (pedantic, experimental and info shown), and of distinct overridden tags."""
    assert row.deb is not None
    done = subprocess.run(
        ["lintian", "--pedantic", "--display-experimental", "--display-info", "--show-overrides", str(row.deb)],
        capture_output=True,
        text=True,
    )
    hints = done.stdout.splitlines()
    errors = sum(line.startswith("E: ") for line in hints)
    warnings = sum(line.startswith("W: ") for line in hints)
    overridden = {line.split()[2] for line in hints if line.startswith("O: ")}
    row.lintian = (errors, warnings, len(overridden))
    row.notes += [line for line in hints if line.startswith(("E: ", "W: "))]


def install_and_run(row: Row, python: str, work: Path) -> None:
    assert row.deb is not None
    report = work / f"{row.arch}-{row.dist}.xml"
    env = {**os.environ, "EDGEAGENT_TEST_ARCH": row.arch, "EDGEAGENT_TEST_DIST": row.dist,
           "EDGEAGENT_TEST_DEB": str(row.deb)}  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(
        [python, "-m", "pytest", TEST, "-p", "no:cacheprovider", f"--junitxml={report}", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    row.seconds["test"] = time.monotonic() - started
    outcome: dict[str, bool] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            outcome[case.get("name", "")] = not any(child.tag in ("failure", "error", "skipped") for child in case)
    row.install = all(outcome.get(name, False) for name in INSTALL_TESTS)
    row.demo = all(outcome.get(name, False) for name in DEMO_TESTS)
    for pattern, key in (
        (r"tree built in (\d+) s", "tree"),
        (r"dpkg -i on .*?: (\d+) s", "dpkg -i"),
        (r"first readings at the ingest (\d+) s", "demo"),
    ):
        if m := re.search(pattern, done.stdout):
            row.seconds[key] = float(m.group(1))
    if done.returncode != 0:
        row.notes.append(f"test_foreign_arch exit {done.returncode}: " + " | ".join(done.stdout.splitlines()[-3:]))


def mark(value: bool | None) -> str:
    return "-" if value is None else ("ok" if value else "FAIL")


def table(rows: list[Row], lintian_version: str) -> str:
    head = ["target", "build", f"lintian E/W/overrides ({lintian_version})", "install", "demo", ".deb", "installed",
            "build s", "tree s", "dpkg -i s", "demo s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        size = f"{r.deb.stat().st_size / 1e6:.1f} MB" if r.deb else "-"
        installed = "-"
        if r.deb:
            kb = subprocess.run(["dpkg-deb", "-f", str(r.deb), "Installed-Size"], capture_output=True, text=True)
            installed = f"{int(kb.stdout.strip()) / 1024:.1f} MiB" if kb.returncode == 0 else "-"
        lint_cell = "/".join(map(str, r.lintian)) if r.lintian else "-"
        times = [f"{r.seconds[k]:.0f}" if k in r.seconds else "cached" if k == "tree" and r.install else "-"
                 for k in ("build", "tree", "dpkg -i", "demo")]  # fmt: skip
        cells = [f"{r.arch}/{r.dist}", mark(r.build), lint_cell, mark(r.install), mark(r.demo), size, installed]
        lines.append("| " + " | ".join(cells + times) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="ARCH/DIST", help="just these targets (repeatable)")
    parser.add_argument("--out", type=Path, help="keep the packages here (default: a temporary folder)")
    parser.add_argument("--python", default=sys.executable, help="the build and test Python (default: this one)")
    args = parser.parse_args()
    targets = [(a, d) for d in DISTS for a in ARCHES]
    if args.only:
        targets = [tuple(t.split("/", 1)) for t in args.only]  # type: ignore[misc]
    lintian_version = subprocess.run(["lintian", "--version"], capture_output=True, text=True).stdout.strip()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edgeagent-matrix-") as tmp:
        out = args.out or Path(tmp) / "debs"
        for arch, dist in targets:
            row = Row(arch, dist)
            rows.append(row)
            print(f"== {arch}/{dist}", file=sys.stderr, flush=True)
            build(row, out, args.python)
            if row.build:
                lint(row)
                install_and_run(row, args.python, Path(tmp))
            print(table([row], lintian_version).splitlines()[-1], file=sys.stderr, flush=True)
        print(table(rows, lintian_version))
    for row in rows:
        for note in row.notes:
            print(f"{row.arch}/{row.dist}: {note}")
    return 0 if all(row.ok() for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
