"""The ``systemd`` marker, and a terminal section with the figures the systemd tests measured."""

from __future__ import annotations

from pathlib import Path

import pytest

FIGURES_KEY = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "systemd: runs the .deb under a real systemd (root, debootstrap, nspawn)")
    config.addinivalue_line(
        "markers", "foreign_arch: installs and runs the .deb in a Debian of another architecture or release (qemu-user)"
    )
    config.stash[FIGURES_KEY] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """These tests last: the emulated tree they need is built meanwhile (``start_prewarm``)."""
    here = Path(__file__).parent
    ours = [item for item in items if here in item.path.parents]
    if ours and len(ours) < len(items):
        items[:] = [item for item in items if here not in item.path.parents] + ours


def pytest_collection_finish(session: pytest.Session) -> None:
    foreign = next((item for item in session.items if item.get_closest_marker("foreign_arch")), None)
    if foreign is not None and len(session.items) > 20 and not session.config.option.collectonly:
        # Only when there is a suite to run beside it.
        foreign.module.start_prewarm(session.config.stash[FIGURES_KEY])  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> list[str]:
    """Lines appended here are printed at the end of the run, so CI logs keep the measurements."""
    return request.config.stash[FIGURES_KEY]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(FIGURES_KEY, [])
    if lines:
        terminalreporter.section("edgeagent under systemd: measured")
        for line in lines:
            terminalreporter.write_line(line)
