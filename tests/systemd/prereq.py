"""What the package tests need of the machine: a missing part skips them, or fails them under CI."""

from __future__ import annotations

import os
import shutil

import pytest


def unavailable(what: str, reason: str) -> None:
    """Skip with the reason shown; under CI a missing prerequisite is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the {what} must run here)", pytrace=False)
    print(f"SKIP {what}: {reason}")
    pytest.skip(reason)


def require(what: str, tools: list[str], *, root_for: str) -> None:
    """Root, and every tool on the PATH (``packaging/ci-deps.sh`` installs them)."""
    if os.geteuid() != 0:
        unavailable(what, f"not root: {root_for} need root")
    if missing := [tool for tool in tools if not shutil.which(tool)]:
        unavailable(what, f"missing {', '.join(missing)}; install with: packaging/ci-deps.sh")
