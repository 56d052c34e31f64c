"""Plant realistic bugs, one at a time, in a copy of the tree and see whether the tests catch each.

The catalogue (``bench/mutants.toml``) holds bugs a person could plausibly write in the
core modules: an off-by-one, a copy-paste slip, a condition turned round, a step left
out. Each names the exact text it replaces and the tests that cover it. Every mutant is
applied alone to a throw-away copy of the tree (never to the working tree, which others
edit), its tests run with ``-x`` from that copy, and the file is put back. A mutant is

- killed: a test failed (the first failing test is named);
- timed out: a test hung until the per-test timeout, or the run until its own limit
  (caught, but only by waiting: a test should fail fast instead);
- survived: every test passed (a bug the suite lets through);
- equivalent: marked so in the catalogue, with the reason it cannot change behaviour;
- stale: its text is no longer in the file (the code moved on: update the catalogue).

Before any mutant, each distinct set of covering tests runs once unmutated and must pass.
It prints one line per mutant and a table per module with the rate of mutants caught.
Too slow for CI on two cores (an hour or more for the whole catalogue).

Run (from the repository, with the test environment's python):
    .venv-test/bin/python bench/mutate.py                 # the whole catalogue, tree at HEAD
    .venv-test/bin/python bench/mutate.py --only sync.    # mutant ids starting with "sync."
    .venv-test/bin/python bench/mutate.py --check         # does every mutant still apply?
    .venv-test/bin/python bench/mutate.py --worktree      # the working tree, uncommitted edits too
    .venv-test/bin/python bench/mutate.py --tests-rev REV # the code at HEAD, the tests as of REV
    .venv-test/bin/python bench/mutate.py --worktree --only ID --tests TEST  # does TEST kill mutant ID?
    .venv-test/bin/python bench/mutate.py --json out.json # save every outcome; --report out.json prints it again
    .venv-test/bin/python bench/mutate.py --matrix ids.txt # which mutants each listed test kills (no -x)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CATALOGUE = Path(__file__).resolve().parent / "mutants.toml"
# The table's rows: a file belongs to the first module whose prefix it starts with.
MODULES = (
    ("src/edgeagent/store", "store"),
    ("src/edgeagent/sync/", "sync"),
    ("src/edgeagent/uplinks/", "uplinks"),
    ("src/edgeagent/devices/health.py", "devices/health"),
    ("src/edgeagent/devices/scheduler.py", "devices/scheduler"),
    ("src/edgeagent/config.py", "config"),
    ("src/edgeagent/profiles.py", "config"),
    ("src/edgeagent/web/", "web (status API)"),
)
TIMEOUT_MARK = re.compile(r"Timeout \(?>?\s*[0-9.]+ ?s\)?|Failed: Timeout")
FAILED_LINE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


@dataclasses.dataclass(slots=True)
class Mutant:
    id: str
    file: str
    bug: str
    find: str
    replace: str
    tests: list[str]
    equivalent: str | None = None
    occurrence: int = 1  # which occurrence of ``find`` when it is not unique

    @property
    def module(self) -> str:
        return next((name for prefix, name in MODULES if self.file.startswith(prefix)), "other")


@dataclasses.dataclass(slots=True)
class Outcome:
    mutant: Mutant
    status: str  # killed, timed out, survived, equivalent, stale, error
    seconds: float = 0.0
    by: str = ""  # the first failing test, or why it could not run
    module: str = ""
    failed: list[str] = dataclasses.field(default_factory=list)  # every failing test (--matrix)

    def __post_init__(self) -> None:
        self.module = self.module or self.mutant.module


def load_outcomes(paths: Sequence[Path]) -> list[Outcome]:
    """Outcomes saved with ``--json``; a mutant in a later file replaces its outcome in an earlier one."""
    by_id: dict[str, Outcome] = {}
    for path in paths:
        for row in json.loads(path.read_text()):
            mutant = Mutant(row["id"], "", row["bug"], "", "", [])
            by_id[row["id"]] = Outcome(mutant, row["status"], row["seconds"], row["by"], row["module"])
    return list(by_id.values())


def load_catalogue(path: Path) -> list[Mutant]:
    """Mutants with their test groups expanded; a bad entry stops the run, naming it."""
    data = tomllib.loads(path.read_text())
    groups: dict[str, list[str]] = data.get("groups", {})
    mutants: list[Mutant] = []
    seen: set[str] = set()
    for i, entry in enumerate(data.get("mutant", [])):
        where = f"{path.name}: mutant[{i}] ({entry.get('id', '?')})"
        missing = [k for k in ("id", "file", "bug", "find", "replace", "tests") if k not in entry]
        if missing:
            raise SystemExit(f"{where}: missing {', '.join(missing)}")
        if entry["id"] in seen:
            raise SystemExit(f"{where}: duplicate id")
        seen.add(entry["id"])
        tests: list[str] = []
        for t in entry["tests"]:
            if t.startswith("@"):
                if t[1:] not in groups:
                    raise SystemExit(f"{where}: no test group {t[1:]!r}")
                tests += groups[t[1:]]
            else:
                tests.append(t)
        mutants.append(
            Mutant(
                id=entry["id"],
                file=entry["file"],
                bug=entry["bug"],
                find=entry["find"],
                replace=entry["replace"],
                tests=list(dict.fromkeys(tests)),
                equivalent=entry.get("equivalent"),
                occurrence=int(entry.get("occurrence", 1)),
            )
        )
    return mutants


def mutated(text: str, m: Mutant) -> str | None:
    """The file's text with the mutant applied, or None when its text is not there (or not unique)."""
    if not applicable(text, m):
        return None
    start = -1
    for _ in range(m.occurrence):
        start = text.index(m.find, start + 1)
    return text[:start] + m.replace + text[start + len(m.find) :]


def applicable(text: str, m: Mutant) -> bool:
    n = text.count(m.find)
    return n == 1 if m.occurrence == 1 else n >= m.occurrence


# -- the copy ----------------------------------------------------------------------------------


def make_copy(dest: Path, *, rev: str, worktree: bool, tests_rev: str | None) -> str:
    """Fill ``dest`` with the tree to mutate; returns what it is, for the report."""
    if worktree:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, check=True, capture_output=True
        ).stdout.decode()
        for name in filter(None, listed.split("\0")):
            src = REPO / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
        what = "the working tree"
    else:
        _extract(rev, dest)
        what = f"{rev} ({_short(rev)})"
    if tests_rev is not None:
        shutil.rmtree(dest / "tests")
        _extract(tests_rev, dest, "tests")
        what += f", tests from {tests_rev} ({_short(tests_rev)})"
    return what


def _extract(rev: str, dest: Path, *paths: str) -> None:
    archive = subprocess.run(["git", "archive", rev, *paths], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def _short(rev: str) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True, capture_output=True)
    return out.stdout.decode().strip()


def copy_env(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(copy / "src")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # an old .pyc of the unmutated file must never be used
    return env


def probe(copy: Path, python: str) -> None:
    """The copy's edgeagent and tests must be the ones imported, not the working tree's."""
    out = subprocess.run(
        [python, "-c", "import edgeagent, tests; print(edgeagent.__file__); print(tests.__file__)"],
        cwd=copy,
        env=copy_env(copy),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not all(Path(p).resolve().is_relative_to(copy.resolve()) for p in out):
        raise SystemExit(f"the copy is not what gets imported: {out}")


# -- running -----------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Run:
    rc: int | None  # None: killed at the run's limit
    seconds: float
    output: str


def run_tests(
    copy: Path, python: str, tests: Sequence[str], *, test_timeout_s: float, limit_s: float, first_only: bool = True
) -> Run:
    cmd = [
        "nice",
        "-n",
        "19",
        python,
        "-m",
        "pytest",
        *(["-x"] if first_only else []),
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "-rfE",
        f"--timeout={test_timeout_s:g}",
        *tests,
    ]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=copy,
        env=copy_env(copy),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its agents and brokers die with it
    )
    try:
        out, _ = proc.communicate(timeout=limit_s)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        out, rc = "", None
    finally:
        _kill_group(proc)
    return Run(rc, time.monotonic() - started, out or "")


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """End the test run and everything it started (its process group), whatever state it is in."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 9)
    proc.communicate()


def classify(run: Run) -> tuple[str, str]:
    if run.rc is None:
        return "timed out", "the run's own limit"
    if run.rc == 0:
        return "survived", ""
    failed = FAILED_LINE.findall(run.output)
    first = failed[0] if failed else ""
    if TIMEOUT_MARK.search(run.output):
        return "timed out", first or "a test's timeout"
    if run.rc in (1, 2):  # tests failed / collection or import failed
        return "killed", first or run.output.strip().splitlines()[-1][:120]
    return "error", f"pytest exited {run.rc}: {run.output.strip().splitlines()[-1][:120] if run.output else ''}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalogue", type=Path, default=CATALOGUE)
    ap.add_argument("--only", action="append", default=[], help="mutant ids starting with this (or a glob); repeatable")
    ap.add_argument("--rev", default="HEAD", help="the commit to mutate (default HEAD)")
    ap.add_argument("--worktree", action="store_true", help="mutate the working tree as it is, uncommitted edits too")
    ap.add_argument("--tests-rev", help="take tests/ from this commit (e.g. to measure before new tests)")
    ap.add_argument("--python", default=sys.executable, help="the test environment's python")
    ap.add_argument("--test-timeout", type=float, default=60.0, help="per-test timeout in seconds (default 60)")
    ap.add_argument(
        "--tests", nargs="+", help="run these tests instead of each mutant's own (to show what one test kills)"
    )
    ap.add_argument(
        "--matrix",
        type=Path,
        help="a file of test ids: run each mutant against those of them among its tests, all of them "
        "(no -x), and print which mutants each test kills",
    )
    ap.add_argument("--keep", type=Path, help="make the copy here (must not exist) and keep it")
    ap.add_argument("--json", type=Path, help="write every outcome here")
    ap.add_argument("--check", action="store_true", help="only say which mutants no longer apply")
    ap.add_argument("--list", action="store_true", help="list the mutants and their tests")
    ap.add_argument("--report", type=Path, nargs="+", help="print the table of runs saved with --json, run nothing")
    args = ap.parse_args(argv)
    if args.report:
        report(load_outcomes(args.report))
        return 0

    mutants = load_catalogue(args.catalogue)
    if args.only:
        mutants = [m for m in mutants if any(m.id.startswith(p) or fnmatch.fnmatchcase(m.id, p) for p in args.only)]
        if not mutants:
            raise SystemExit(f"no mutant id in {args.catalogue.name} starts with or matches {', '.join(args.only)}")
    if args.tests:
        for m in mutants:
            m.tests = list(args.tests)
    if args.matrix:
        try:
            wanted = [line.strip() for line in args.matrix.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise SystemExit(f"--matrix: cannot read the list of test ids: {exc}") from None
        for m in mutants:
            m.tests = [t for t in wanted if any(t == c or t.startswith(c.rstrip("/") + "::") for c in m.tests)]
        mutants = [m for m in mutants if m.tests]
        if not mutants:
            raise SystemExit(f"--matrix: no test in {args.matrix} covers a mutant (ids as tests/FILE.py::NAME)")
    if args.list:
        for m in mutants:
            print(f"{m.id:42} {m.file}\n    {m.bug}\n    tests: {' '.join(m.tests)}")
        return 0

    if args.keep is not None:
        copy = args.keep.resolve()
        copy.mkdir(parents=True)
    else:
        copy = Path(tempfile.mkdtemp(prefix="edgeagent-mutants-"))
    if copy.is_relative_to(REPO):
        raise SystemExit(f"refusing to mutate inside the repository: {copy}")
    try:
        return _run_all(args, mutants, copy)
    finally:
        if args.keep is None:
            shutil.rmtree(copy, ignore_errors=True)


def _run_all(args: argparse.Namespace, mutants: list[Mutant], copy: Path) -> int:
    what = make_copy(copy, rev=args.rev, worktree=args.worktree, tests_rev=args.tests_rev)
    originals: dict[str, str] = {}
    for m in mutants:
        if m.file not in originals:
            path = copy / m.file
            originals[m.file] = path.read_text() if path.is_file() else ""
    outcomes: list[Outcome] = []
    todo: list[Mutant] = []
    for m in mutants:
        # A test file the tree under test does not have yet (tests from an older commit) is left out.
        m.tests = [t for t in m.tests if (copy / t.split("::")[0]).is_file()]
    by_module: dict[str, list[str]] = {}
    for m in mutants:
        by_module.setdefault(m.module, []).extend(m.tests)
    for m in mutants:
        # None of its own tests existed then: the tests that covered its module then stand in,
        # so an older tree is judged by what it had, not counted as unable to run.
        if not m.tests:
            m.tests = list(dict.fromkeys(by_module.get(m.module, [])))
        if not applicable(originals[m.file], m):
            outcomes.append(Outcome(m, "stale", by=f"its text is not (exactly once) in {m.file}"))
        elif m.equivalent:
            outcomes.append(Outcome(m, "equivalent", by=m.equivalent))
        elif not m.tests:
            outcomes.append(Outcome(m, "error", by="none of its tests is in this tree"))
        else:
            todo.append(m)
    print(f"mutating {what} in {copy}: {len(mutants)} mutants, {len(todo)} to run", flush=True)
    for o in outcomes:
        if o.status == "stale":
            print(f"  stale       {o.mutant.id}: {o.by}", flush=True)
    if args.check:
        return 1 if any(o.status == "stale" for o in outcomes) else 0

    probe(copy, args.python)
    baselines: dict[tuple[str, ...], Run] = {}
    for m in todo:
        key = tuple(m.tests)
        if key not in baselines:
            run = run_tests(copy, args.python, key, test_timeout_s=args.test_timeout, limit_s=3600)
            if run.rc != 0:  # a flaky test gets one more chance; a broken one stops its mutants
                run = run_tests(copy, args.python, key, test_timeout_s=args.test_timeout, limit_s=3600)
            baselines[key] = run
            state = "passes" if run.rc == 0 else "FAILS"
            print(f"  baseline    {state} in {run.seconds:5.1f} s: {' '.join(key)}", flush=True)
            if run.rc != 0:
                print("\n".join(run.output.strip().splitlines()[-15:]), flush=True)
        base = baselines[key]
        if base.rc != 0:
            outcomes.append(Outcome(m, "error", by="its tests fail unmutated"))
            continue
        path = copy / m.file
        text = mutated(originals[m.file], m)
        assert text is not None
        path.write_text(text)
        try:
            run = run_tests(
                copy,
                args.python,
                key,
                test_timeout_s=args.test_timeout,
                limit_s=max(120.0, 3 * base.seconds + 60),
                first_only=args.matrix is None,
            )
        finally:
            path.write_text(originals[m.file])
        status, by = classify(run)
        outcomes.append(
            Outcome(
                m,
                status,
                run.seconds,
                by,
                failed=list(dict.fromkeys(f.split("[")[0] for f in FAILED_LINE.findall(run.output))),
            )
        )
        print(f"  {status:11} {m.id} ({run.seconds:.1f} s) {by}", flush=True)

    report(outcomes)
    if args.matrix is not None:
        print("\nwhich mutants each test kills:")
        for test in dict.fromkeys(t for m in mutants for t in m.tests):
            kills = [o.mutant.id for o in outcomes if test in o.failed]
            print(f"  {test}: {', '.join(kills) if kills else 'none'}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                [
                    {"id": o.mutant.id, "module": o.module, "status": o.status, "seconds": round(o.seconds, 1)}
                    | {"by": o.by, "bug": o.mutant.bug, "failed": o.failed}
                    for o in outcomes
                ],
                indent=1,
            )
        )
    return 0


def report(outcomes: list[Outcome]) -> None:
    """Per module: killed, timed out, survived; the rate is (killed + timed out) / run."""
    rows: dict[str, dict[str, int]] = {}
    for o in outcomes:
        counts = rows.setdefault(o.module, {})
        counts[o.status] = counts.get(o.status, 0) + 1
    rows["overall"] = {}
    for name, counts in list(rows.items()):
        if name != "overall":
            for k, v in counts.items():
                rows["overall"][k] = rows["overall"].get(k, 0) + v
    head = f"{'module':20} {'mutants':>7} {'killed':>6} {'timed out':>9} {'survived':>8} {'equiv.':>6} {'rate':>6}"
    print("\n" + head + "\n" + "-" * len(head))
    for name, c in rows.items():
        ran = c.get("killed", 0) + c.get("timed out", 0) + c.get("survived", 0)
        rate = f"{100 * (c.get('killed', 0) + c.get('timed out', 0)) / ran:.0f}%" if ran else "-"
        total = sum(c.values())
        extra = ", ".join(f"{c[k]} {k}" for k in ("stale", "error") if c.get(k))
        print(
            f"{name:20} {total:7} {c.get('killed', 0):6} {c.get('timed out', 0):9} {c.get('survived', 0):8} "
            f"{c.get('equivalent', 0):6} {rate:>6}" + (f"   ({extra})" if extra else "")
        )
    survivors = [o for o in outcomes if o.status in ("survived", "timed out", "error")]
    if survivors:
        print("\nnot killed outright:")
        for o in survivors:
            print(f"  {o.status:9} {o.mutant.id}: {o.mutant.bug}" + (f" [{o.by}]" if o.by else ""))


if __name__ == "__main__":
    sys.exit(main())
