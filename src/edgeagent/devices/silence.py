"""Whether a connection has gone silent, or only one device behind it has.

An RS-485-to-Ethernet converter serves several unit ids over one TCP connection. When a
request times out, either that unit is dead or the connection is (a NAT or firewall
dropped it, the converter is stuck), and only the second is cured by dialling again.
The bus's own traffic tells them apart:

- an answer from any device (an exception answer too) proves the connection works and
  clears the count;
- a device that timed out before another device answered is dead on its own account:
  its timeouts no longer count against the connection, until it answers again;
- the connection is silent after ``limit`` counted timeouts in a row, if they came from
  two devices or no other device is left that could still answer;
- if they all came from one device, another device is asked next, and its answer (or
  its silence) decides.

So a dead unit among answering neighbours never gets the connection reopened however
many retries it has, one timeout of a healthy unit (answered on its retry) does not
either, and a silent connection is caught within a few requests even when a neighbour
is polled only once an hour.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Verdict(enum.Enum):
    WAIT = "wait"  # not enough evidence yet
    ASK_ANOTHER = "ask another"  # one device alone is quiet: poll a witness next
    SILENT = "silent"  # the connection answers nothing: reopen it


class SilenceWatch:
    """Counts unanswered requests on one connection, device by device."""

    def __init__(self, limit: int, devices: Iterable[str]) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._devices = frozenset(devices)
        self.run = 0  # counted timeouts since the last answer
        self._counted: set[str] = set()  # devices whose timeouts make up the run
        self._quiet: set[str] = set()  # every device that timed out since the last answer
        self.dead: set[str] = set()  # quiet while the connection answered for others

    def answered(self, device: str) -> None:
        """``device`` answered: the connection works, and whoever was quiet is dead alone."""
        if self._quiet:
            self.dead |= self._quiet
        self.dead.discard(device)
        self.reset()

    def timed_out(self, device: str) -> Verdict:
        """``device`` did not answer in time: what does that say about the connection?"""
        self._quiet.add(device)
        if device in self.dead:
            return Verdict.WAIT
        self.run += 1
        self._counted.add(device)
        if self.run < self.limit:
            return Verdict.WAIT
        if len(self._counted) >= 2 or not self.witnesses():
            return Verdict.SILENT
        return Verdict.ASK_ANOTHER

    def witnesses(self) -> frozenset[str]:
        """Devices whose answer would show the connection still works."""
        return self._devices - self.dead - self._quiet

    def describe(self) -> str:
        """The evidence, for the log and the status page."""
        return f"{self.run} requests in a row unanswered ({', '.join(sorted(self._counted))})"

    def reset(self) -> None:
        """A fresh connection (or an answer): start counting again; the dead stay dead."""
        self.run = 0
        self._counted.clear()
        self._quiet.clear()
