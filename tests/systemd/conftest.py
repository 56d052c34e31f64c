"""The ``systemd`` marker, and a terminal section with the figures the systemd tests measured."""

from __future__ import annotations

import pytest

FIGURES_KEY = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "systemd: runs the .deb under a real systemd (root, debootstrap, nspawn)")
    config.addinivalue_line(
        "markers", "foreign_arch: installs and runs the .deb in a Debian of another architecture or release (qemu-user)"
    )
    config.stash[FIGURES_KEY] = []


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
