"""Recent log lines for the page's log view: a bounded ring, secrets blotted out before keeping.

The agent never logs a secret on purpose; this is the second line of defence: every
secret the config names (tokens, passwords, keys) is replaced by ``***`` in each line
before it is kept, so a library that echoes a header cannot put one on the page.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

LINES_KEPT = 500
MAX_LINE_CHARS = 2000


class RecentLog(logging.Handler):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[dict[str, Any]] = deque(maxlen=LINES_KEPT)
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            text = str(record.msg)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        self.lines.append(
            {
                "ts": record.created or time.time(),
                "level": record.levelname,
                "logger": record.name,
                "message": text[:MAX_LINE_CHARS],
            }
        )

    def query(self, level: str = "INFO", device: str = "", limit: int = 200) -> list[dict[str, Any]]:
        """Newest first: lines at ``level`` or above, mentioning ``device`` if one is given."""
        floor = logging.getLevelName(level.upper())
        floor = floor if isinstance(floor, int) else logging.INFO
        out = []
        for line in reversed(self.lines):
            if logging.getLevelName(line["level"]) >= floor and (not device or device in line["message"]):
                out.append(line)
                if len(out) >= limit:
                    break
        return out

    def install(self) -> None:
        logging.getLogger().addHandler(self)

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self)
