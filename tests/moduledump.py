"""Run ``edgeagent`` exactly as ``python -m edgeagent`` does, and list what it imported.

A wrapper started with ``python -c`` runs the package's ``__main__`` through runpy and,
at exit, writes ``sorted(sys.modules)`` to a file: what a command imported is seen from
outside, with nothing in the agent that knows it is watched. The list is written when
the process ends, so modules imported lazily while it ran are included.
"""

from __future__ import annotations

import sys
from pathlib import Path

MODULE_DUMP = (
    "import atexit, runpy, sys\n"
    "out = sys.argv.pop(1)\n"
    "def dump():\n"
    "    with open(out, 'w') as f:\n"
    "        f.write('\\n'.join(sorted(sys.modules)))\n"
    "atexit.register(dump)\n"
    "sys.argv[0] = 'edgeagent'\n"
    "runpy.run_module('edgeagent', run_name='__main__', alter_sys=True)\n"
)


def edgeagent_argv(modules_file: Path, *args: str) -> list[str]:
    """``edgeagent ARGS...`` in a fresh interpreter that writes its module list to ``modules_file``."""
    return [sys.executable, "-c", MODULE_DUMP, str(modules_file), *args]


def read_modules(modules_file: Path) -> set[str]:
    return set(modules_file.read_text().split())


def loaded(modules: set[str], package: str) -> bool:
    """Whether ``package`` or any of its submodules was imported."""
    return any(m == package or m.startswith(f"{package}.") for m in modules)
