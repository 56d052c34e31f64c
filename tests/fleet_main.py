"""``edgeagent run`` with the fleet's clock seam filled: the agent takes its clock as NTP-synchronised.

This sandbox's kernel clock is never synchronised, so a test of expiry (which is enforced
only by a clock known good) starts the agent through here: the very ``cli.run_agent``
the service runs, with ``fleet_clock`` answering True. Nothing in production reads an
environment variable for this.

    python -m tests.fleet_main --config FILE
"""

from __future__ import annotations

import argparse
import sys

from edgeagent.cli import run_agent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    return run_agent(args.config, "INFO", fleet_clock=lambda: True)


if __name__ == "__main__":
    sys.exit(main())
