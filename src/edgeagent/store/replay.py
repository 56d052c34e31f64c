"""What the tail of a run holds, taken back at the next start (or salvaged after damage).

After a SIGKILL the tail holds every reading numbered since the blocks were last
written, and the acknowledgements since the cursors were: its readings not yet in a
block and not yet delivered to every destination are committed, its acknowledgements
move the cursors, and numbering goes on above every number it holds, so nothing is
lost, skipped or reused. A tail of another boot (a power cut), a damaged one, or none
after an unclean stop may have lost its last records: numbering then goes on above the
reservation, which was written through to the card before any number in it was used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgeagent.clock import boot_id
from edgeagent.model import Priority, StoredReading
from edgeagent.store.blocks import BlockError, Names, decode_segment
from edgeagent.store.tail import parse_payload, read_tail, tail_path

if TYPE_CHECKING:
    from edgeagent.store.core import _Core

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TailReadings:
    """The readings, acknowledgements and series of a tail, and the highest number it knew."""

    boot: str
    readings: dict[Priority, list[StoredReading]] = field(default_factory=dict)
    acks: dict[tuple[str, Priority], int] = field(default_factory=dict)
    series: list[tuple[int, str, str, str]] = field(default_factory=list)  # not among the names given
    highest: int = 0
    damaged: str | None = None
    buffer_id: str | None = None


def tail_readings(path: Path, names: Names) -> TailReadings | None:
    """Decode a tail file; None when there is none. Stops at the first record it cannot read."""
    content = read_tail(path)
    if content is None:
        return None
    header = content.header
    out = TailReadings(boot=str(header.get("boot", "unknown")), damaged=content.damaged)
    out.buffer_id = header.get("bid")
    with contextlib.suppress(TypeError, ValueError):
        out.highest = int(header.get("last_seq", 0))
    known = dict(names)
    try:
        for payload in content.payloads:
            head, segments = parse_payload(payload)
            for sid, device, point, unit in head.get("series", []):
                if sid not in known:
                    known[sid] = (device, point, unit)
                    out.series.append((sid, device, point, unit))
            for dest, prio, seq in head.get("acks", []):
                key = (str(dest), Priority(prio))
                out.acks[key] = max(out.acks.get(key, 0), int(seq))
            for prio, segment in segments:
                readings, _ = decode_segment(segment, 0, prio, known, lambda _seq: out.boot)
                out.readings.setdefault(prio, []).extend(readings)
                if readings:
                    out.highest = max(out.highest, readings[-1].seq)
    except (BlockError, ValueError, TypeError, KeyError, struct.error) as exc:
        out.damaged = f"a record of the tail cannot be decoded ({exc})"
    return out


def take_tail(core: _Core) -> None:
    """At open: commit what the last run's tail holds and no block does, and set the counter."""
    path = tail_path(core.path)
    found = tail_readings(path, core.series_by_id)
    if found is not None and found.buffer_id not in (None, core.buffer_id):
        orphan = path.with_name(f"{path.name}.orphan-{found.buffer_id}")
        log.error("tail %s belongs to buffer %s, not %s; moved to %s", path, found.buffer_id, core.buffer_id, orphan)
        os.rename(path, orphan)
        found = None
    if found is not None:
        _commit_found(core, found)
    trusted = found is not None and found.damaged is None and found.boot == boot_id()
    if not core.clean_stop and not trusted:
        # Numbers may have gone upstream that nothing here remembers: go on above the reservation.
        why = "none" if found is None else found.damaged or "from another boot (a power cut?)"
        log.warning(
            "the buffer was not closed cleanly and its tail is %s: numbering goes on above the reserved %d",
            why,
            core.reserved_upto,
        )
        core.last_seq = max(core.last_seq, core.reserved_upto)


def _commit_found(core: _Core, found: TailReadings) -> None:
    if found.damaged is not None:
        log.error("the tail of the last run is damaged (%s); what came before it is kept", found.damaged)
    for sid, device, point, unit in found.series:
        core.series[(device, point, unit)] = sid
        core.series_by_id[sid] = (device, point, unit)
    moved = []
    for key, seq in found.acks.items():
        if key in core.cursors and seq > core.cursors[key]:
            core.cursors[key] = seq
            moved.append((key[0], key[1], seq))
    keep = sorted(
        (
            r
            for prio, rs in found.readings.items()
            for r in rs
            if r.seq > core.top[prio] and r.seq > core._ack_floor(prio)
        ),
        key=lambda r: r.seq,
    )
    boots = []
    timed = [r.seq for r in keep if r.boot is not None]
    if timed and core._boot_of(timed[0]) != found.boot:
        boots.append((timed[0], found.boot))
        if found.boot == boot_id():
            core.this_boot_from = timed[0]
    core.commit(keep, series=found.series, boots=boots, cursors=moved)
    core.last_seq = max(core.last_seq, found.highest)
    core.cursors, core.unsent = core.cursor_state(core.filters)
    total = sum(len(rs) for rs in found.readings.values())
    if total:
        core.tail_note = (
            f"{len(keep)} readings of the last run taken back from its tail ({total - len(keep)} delivered)"
        )
        log.info("%s", core.tail_note)
