"""The .deb on the gateways' own architectures and Debian releases, run under emulation.

For one target, ``EDGEAGENT_TEST_ARCH`` (amd64, arm64 or armhf; default arm64) and
``EDGEAGENT_TEST_DIST`` (bookworm or trixie; default bookworm), the package is built with
``packaging/build-deb.sh`` and installed with ``dpkg -i`` into a minimal Debian of that
architecture and release (``EDGEAGENT_TEST_DEB`` names a package built beforehand
instead), where ``edgeagent --version``, ``check-config`` on the shipped
example and the demo run (its status page answers, readings reach its ingest endpoint).
Foreign binaries run through qemu-user (binfmt_misc); the test mounts binfmt_misc and
enables the interpreter when they are not.

The tree is built once with mmdebstrap, holding exactly the package's Depends (so
``dpkg -i`` checks them and no apt runs), and cached beside the nspawn test's tree. Each
run works in an overlay over it, mounted with ``/proc`` and ``/dev`` inside a mount
namespace of its own (``unshare``) for each command: nothing stays mounted, even if the
test is killed. Needs root, mmdebstrap, arch-test, qemu-user-static and binfmt-support
(``packaging/ci-deps.sh``) and a Debian mirror once; without them the tests skip with the
reason, except under ``CI=true``, where they fail. ``packaging/matrix.py`` runs all six targets.
In a whole test run these tests come last, and the package and the tree are built at a low
priority in the background meanwhile (``start_prewarm``): a cold cache costs CI little time.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import selectors
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.systemd.prereq import require, unavailable

pytestmark = [pytest.mark.foreign_arch, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("EDGEAGENT_TEST_CACHE", "/var/cache/edgeagent-test"))
ARCH = os.environ.get("EDGEAGENT_TEST_ARCH", "arm64")
DIST = os.environ.get("EDGEAGENT_TEST_DIST", "bookworm")
MIRROR = os.environ.get("EDGEAGENT_TEST_MIRROR", "http://deb.debian.org/debian")
QEMU = {"arm64": "aarch64", "armhf": "arm", "amd64": "x86_64"}
MACHINE = {"arm64": "aarch64", "armhf": "armv7l", "amd64": "x86_64"}
PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
# Change this when the tree needs rebuilding for a reason the arguments do not show.
RECIPE_VERSION = "v3"
# Every package is configured under emulation, so the tree takes minutes: no fsync per file
# (a throwaway tree). The CA bundle stays, slow as its rehash under qemu is: trixie's pip,
# which postinst runs, will not start without it.
MMDEBSTRAP = [
    "--variant=essential",  # no apt: dpkg -i is the installer under test
    "--aptopt=APT::Install-Recommends false",
    "--dpkgopt=force-unsafe-io",
]
GUEST_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/root"]
CONFIG = "/etc/edgeagent/edgeagent.toml"
# Python under qemu-user starts in seconds, not milliseconds: generous limits, conditions waited on.
DEMO_UP_S = 300.0
READINGS_S = 180.0
STOP_S = 60.0


def _unavailable(reason: str) -> None:
    unavailable("foreign-architecture test", reason)


def _host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def _require() -> None:
    if ARCH not in QEMU or DIST not in PYTHON:
        pytest.fail(f"EDGEAGENT_TEST_ARCH={ARCH!r} / EDGEAGENT_TEST_DIST={DIST!r}: not a built target")
    tools = ["mmdebstrap", "unshare", "chroot", "dpkg-deb", "mount"]
    foreign = _host_arch() != ARCH
    if foreign:
        tools += ["arch-test", "update-binfmts", f"qemu-{QEMU[ARCH]}-static"]
    require("foreign-architecture test", tools, root_for="mmdebstrap, chroot and the overlay mounts")
    if foreign:
        _ensure_binfmt(QEMU[ARCH])


def _ensure_binfmt(qemu: str) -> None:
    """Foreign binaries run through qemu-user: mount binfmt_misc and enable the interpreter if needed."""
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], capture_output=True, check=False)
    entry = binfmt / f"qemu-{qemu}"
    if not entry.exists() or "enabled" not in entry.read_text():
        subprocess.run(["update-binfmts", "--enable", f"qemu-{qemu}"], capture_output=True, check=False)
    if not entry.exists() or "enabled" not in entry.read_text():
        _unavailable(f"binfmt_misc has no enabled qemu-{qemu}; install qemu-user-static and binfmt-support")


def _depends(deb: Path) -> list[str]:
    """The package names of the .deb's Depends: what the tree must hold for ``dpkg -i`` alone."""
    field = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True, check=True).stdout
    names = [re.split(r"[\s(]", alt.strip())[0] for dep in field.split(",") for alt in dep.split("|")[:1]]
    return sorted(set(filter(None, names)))


def _remove_tree(path: Path) -> None:
    """Delete a tree, but never one with something mounted in it (that would reach the host's files)."""
    inside = str(path.resolve()) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    if busy := [m for m in mounts if m.startswith(inside)]:
        pytest.fail(f"{path} has mounts in it ({', '.join(busy)}): unmount them, then delete it")
    shutil.rmtree(path, ignore_errors=True)


def _ensure_rootfs(include: list[str], figures: list[str], *, nice: list[str] = ()) -> Path:  # type: ignore[assignment]
    """Build the cached tree once (under a lock); reuse it while the recipe is the same."""
    rootfs = CACHE / f"rootfs-{DIST}-{ARCH}"
    args = [*MMDEBSTRAP, f"--arch={ARCH}", f"--include={','.join(include)}", DIST]
    recipe = f"mmdebstrap {' '.join(args)} ({RECIPE_VERSION})"
    CACHE.mkdir(parents=True, exist_ok=True)
    stamp = rootfs / ".edgeagent-rootfs"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == recipe:
            return rootfs
        partial = CACHE / f"{rootfs.name}.partial"
        _remove_tree(partial)
        started = time.monotonic()
        done = subprocess.run(
            # In a mount namespace of its own: what mmdebstrap mounts in the tree (/proc, /sys)
            # goes away with it, even when it is killed, so no rmtree ever walks into a mount.
            [
                *nice,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "mmdebstrap",
                "--quiet",
                *args,
                str(partial),
                MIRROR,
            ],
            capture_output=True,
            text=True,
            timeout=1500,
        )
        if done.returncode != 0:
            _remove_tree(partial)
            pytest.fail(f"mmdebstrap {DIST} {ARCH} from {MIRROR} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        (partial / stamp.name).write_text(recipe)
        _remove_tree(rootfs)
        partial.rename(rootfs)
        took_s = time.monotonic() - started
        figures.append(f"mmdebstrap {DIST}/{ARCH} tree built in {took_s:.0f} s (cached in {rootfs})")
        return rootfs


# Run with the positional arguments lower, upper, work, merged, then the command: mounts the
# overlay, /proc and /dev in this namespace only, and becomes the command inside the tree.
ENTER = """set -e
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"
mount -t proc proc "$4/proc"
mount --rbind /dev "$4/dev"
root=$4
shift 4
exec chroot "$root" "$@"
"""


class Tree:
    """A throwaway copy (an overlay) of the cached tree; ``argv`` runs a command inside it as root."""

    def __init__(self, lower: Path, work: Path) -> None:
        self.lower = lower
        self.dirs = [work / name for name in ("upper", "work", "merged")]
        for d in self.dirs:
            d.mkdir(parents=True)

    @property
    def upper(self) -> Path:
        """Files put here before a command appear in the tree."""
        return self.dirs[0]

    def argv(self, *cmd: str) -> list[str]:
        mounts = [str(self.lower), *map(str, self.dirs)]
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", ENTER, "sh", *mounts,
                "env", "-i", *GUEST_ENV, *cmd]  # fmt: skip

    def run(self, *cmd: str, timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*cmd), capture_output=True, text=True, timeout=timeout_s)

    def check(self, *cmd: str, timeout_s: float = 600.0) -> str:
        done = self.run(*cmd, timeout_s=timeout_s)
        if done.returncode != 0:
            command = " ".join(cmd)
            pytest.fail(f"in the {DIST}/{ARCH} tree: {command} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done.stdout


@dataclass
class Installed:
    tree: Tree
    deb: Path
    install_s: float


def _build_deb(out: Path, *, nice: list[str] = ()) -> Path:  # type: ignore[assignment]
    """The package as a user builds it for this target, with this test's Python (the tested versions)."""
    done = subprocess.run(
        [*nice, str(REPO / "packaging" / "build-deb.sh"), "--arch", ARCH, "--dist", DIST, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, f"build-deb.sh failed:\n{done.stdout}\n{done.stderr[-5000:]}"
    return Path(done.stdout.strip().splitlines()[-1])


_prewarm: threading.Thread | None = None
_prewarmed: dict[str, str] = {}


def start_prewarm(figures: list[str]) -> None:
    """Build the package and its tree in the background while the rest of the suite runs.

    From a cold cache (as in CI) the tree takes minutes under emulation, almost all of it
    CPU in qemu; run at a low priority beside the suite's mostly waiting tests, it is ready
    by the time these tests come last (``conftest.py`` orders them so). Any failure is left
    for the test itself to meet again and report.
    """
    global _prewarm
    if _prewarm is not None or os.environ.get("EDGEAGENT_TEST_DEB"):
        return
    try:
        _require()
    except (pytest.skip.Exception, pytest.fail.Exception):  # the test says why when it runs
        return

    def work() -> None:
        try:
            started = time.monotonic()
            deb = _build_deb(Path(tempfile.mkdtemp(prefix="edgeagent-prewarm-")), nice=["nice", "-n", "10"])
            _ensure_rootfs(_depends(deb), figures, nice=["nice", "-n", "10"])
            _prewarmed["deb"] = str(deb)
            figures.append(
                f"package and {DIST}/{ARCH} tree ready in the background in {time.monotonic() - started:.0f} s"
            )
        except (
            OSError,
            subprocess.SubprocessError,
            AssertionError,
            pytest.fail.Exception,
        ) as exc:  # the test meets it again
            _prewarmed["error"] = repr(exc)[:300]

    _prewarm = threading.Thread(target=work, name="foreign-arch-prewarm", daemon=True)
    _prewarm.start()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, figures: list[str]) -> Iterator[Installed]:
    _require()
    if _prewarm is not None:
        _prewarm.join()
    if prebuilt := os.environ.get("EDGEAGENT_TEST_DEB") or _prewarmed.get("deb"):  # built beforehand
        deb = Path(prebuilt)
    else:
        started = time.monotonic()
        deb = _build_deb(tmp_path_factory.mktemp("debs"))
        figures.append(f"build-deb.sh --arch {ARCH} --dist {DIST}: {time.monotonic() - started:.0f} s")
    rootfs = _ensure_rootfs(_depends(deb), figures)
    work = tmp_path_factory.mktemp(f"tree-{DIST}-{ARCH}")
    tree = Tree(rootfs, work)
    try:
        (tree.upper / "root").mkdir()
        shutil.copy(deb, tree.upper / "root" / deb.name)
        started = time.monotonic()
        done = tree.run("dpkg", "-i", f"/root/{deb.name}", timeout_s=1200)
        assert done.returncode == 0, f"dpkg -i:\n{done.stdout}\n{done.stderr}"
        install_s = time.monotonic() - started
        how = "native" if _host_arch() == ARCH else "under qemu-user"
        figures.append(f"dpkg -i on {DIST}/{ARCH} (venv built offline, {how}): {install_s:.0f} s")
        yield Installed(tree, deb, install_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if "deb" in _prewarmed:  # the background build's own folder (outside pytest's tmp)
            shutil.rmtree(Path(_prewarmed["deb"]).parent, ignore_errors=True)


def test_dpkg_installs_it_with_only_its_depends(installed: Installed) -> None:
    """dpkg alone, offline: configured, with the venv on the target's own Python and machine."""
    status = installed.tree.check("dpkg-query", "-W", "-f=${Status} ${Version} ${Architecture}", "edgeagent")
    version = subprocess.run(
        ["dpkg-deb", "-f", str(installed.deb), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert status == f"install ok installed {version} {ARCH}"
    probe = "import platform, sys; print(platform.machine(), '%d.%d' % sys.version_info[:2])"
    venv = installed.tree.check("/opt/edgeagent/venv/bin/python", "-c", probe).split()
    assert venv == [MACHINE[ARCH], PYTHON[DIST]]
    for path in ("/usr/share/man/man1/edgeagent.1.gz", "/usr/share/doc/edgeagent/copyright",
                 "/usr/share/doc/edgeagent/changelog.Debian.gz", "/usr/lib/sysusers.d/edgeagent.conf"):  # fmt: skip
        assert installed.tree.run("test", "-s", path).returncode == 0, f"{path} not installed"
    assert installed.tree.run("getent", "passwd", "edgeagent").returncode == 0


def test_lintian_finds_nothing_unexplained(installed: Installed, figures: list[str]) -> None:
    """No error or warning (pedantic, experimental and info shown); each override carries its reason."""
    if not shutil.which("lintian"):
        _unavailable("missing lintian; install with: packaging/ci-deps.sh")
    flags = ["--pedantic", "--display-experimental", "--display-info", "--show-overrides"]
    done = subprocess.run(["lintian", *flags, str(installed.deb)], capture_output=True, text=True, timeout=600)
    hints = done.stdout.splitlines()
    assert [line for line in hints if line.startswith(("E: ", "W: "))] == [], done.stdout
    overridden = sorted({line.split()[2] for line in hints if line.startswith("O: ")})
    figures.append(f"lintian on the {DIST}/{ARCH} package: 0 errors, 0 warnings, overridden: {', '.join(overridden)}")


# Every compiled module of every bundled wheel loads on the target: right machine, ABI and glibc.
IMPORT_ALL = """
import importlib, json, pathlib, sys, sysconfig
site = pathlib.Path(sysconfig.get_paths()["platlib"])
names = sorted({".".join(p.relative_to(site).with_suffix("").with_suffix("").parts) for p in site.rglob("*.so")})
failed = {}
for name in names:
    if name.split(".")[0] in ("pip", "setuptools", "_distutils_hack"):
        continue
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
print(json.dumps({"imported": len(names) - len(failed), "failed": failed}))
"""


def test_every_compiled_module_loads(installed: Installed, figures: list[str]) -> None:
    result = json.loads(installed.tree.check("/opt/edgeagent/venv/bin/python", "-c", IMPORT_ALL))
    assert result["failed"] == {}
    assert result["imported"] > 0
    figures.append(f"{DIST}/{ARCH}: {result['imported']} compiled modules of the bundled wheels import")


def test_version_and_the_shipped_example_config(installed: Installed) -> None:
    version = subprocess.run(
        ["dpkg-deb", "-f", str(installed.deb), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert installed.tree.check("edgeagent", "--version").strip() == f"edgeagent {version.split('-')[0]}"
    assert installed.tree.check("edgeagent", "check-config", CONFIG).strip() == "OK"


def _get(url: str) -> bytes:
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # the demo's status page has a self-signed certificate
    with urllib.request.urlopen(url, timeout=10, context=insecure) as response:
        return response.read()


class Demo:
    """``edgeagent demo`` running in the tree; its output read as it comes."""

    def __init__(self, tree: Tree) -> None:
        self.proc = subprocess.Popen(
            tree.argv("edgeagent", "demo", "--port", "0"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""
        assert self.proc.stdout is not None
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """Read output until ``pattern`` matches it; fail if the demo exits or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while not (m := re.search(pattern, self.output)):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {pattern!r} from the demo within {timeout_s:.0f} s:\n{self.output[-3000:]}")
            if self._selector.select(timeout=min(left, 1.0)):
                line = self.proc.stdout.readline()  # type: ignore[union-attr]
                if not line and self.proc.poll() is not None:
                    pytest.fail(f"the demo exited with {self.proc.returncode}:\n{self.output[-3000:]}")
                self.output += line
        return m

    def stop(self, timeout_s: float) -> int:
        """SIGINT, as Ctrl-C: qemu-user hands it to the agent, which shuts down cleanly."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            pytest.fail(f"the demo did not stop within {timeout_s:.0f} s of SIGINT:\n{self.output[-3000:]}")
        finally:
            self._selector.close()
            if self.proc.stdout is not None:
                self.output += self.proc.stdout.read()
                self.proc.stdout.close()
        return self.proc.returncode


def test_demo_serves_its_page_and_delivers_readings(installed: Installed, figures: list[str]) -> None:
    started = time.monotonic()
    demo = Demo(installed.tree)
    try:
        page = demo.wait_for(r"Status page: (https?://\S+/)", DEMO_UP_S).group(1)
        up_s = time.monotonic() - started
        stats_url = demo.wait_for(r"ingest stats: (http://\S+/stats)", 10).group(1)
        assert _get(page + "healthz") == b"ok\n"

        deadline = time.monotonic() + READINGS_S
        while (received := json.loads(_get(stats_url))["readings_received"]) == 0:
            if time.monotonic() > deadline or demo.proc.poll() is not None:
                pytest.fail(f"no readings at the demo's ingest within {READINGS_S:.0f} s:\n{demo.output[-3000:]}")
            time.sleep(0.5)  # polling the ingest's counter
        first_s = time.monotonic() - started
    finally:
        code = demo.stop(STOP_S)
    assert code == 0, demo.output[-3000:]
    figures.append(
        f"demo on {DIST}/{ARCH}: status page up {up_s:.0f} s, first readings at the ingest {first_s:.0f} s "
        f"({received} received), stopped cleanly"
    )
