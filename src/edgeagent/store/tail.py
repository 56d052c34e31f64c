"""The tail: readings made durable against a crash in one small append, before their commit.

A reading may go upstream only once its sequence number can never be handed out again.
Committing every poll to SQLite would cost a 4 KiB WAL frame (and its checkpoint) each
time; instead the readings of each poll are appended to this file, compressed in one
running deflate stream, with a plain ``write`` (no fsync). The kernel keeps written data
when the process dies, so after a SIGKILL the next start reads the tail back and every
number it holds stays taken: no reading is lost, no number reused, none skipped. A power
cut can lose the tail's last seconds; the store then numbers on above a range reserved
durably in advance (see ``edgeagent.store``), leaving a gap but never a reuse.

File: ``MAGIC | u32 n | header (JSON, n bytes) | record*``; a record is
``u32 n | u32 crc32 | n bytes`` of the shared raw-deflate stream, flushed per record.
Inflated, a record is ``u32 n | head (JSON: new series, acknowledgements) | segment*``
where each segment is ``u8 class | u32 n | n bytes`` (``edgeagent.store.blocks``).
A record cut short at the end is a write the process did not finish (nothing of it was
sent); a record whose checksum fails is damage.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeagent.model import Priority
from edgeagent.store.schema import FILE_MODE

MAGIC = b"EATAIL1\n"
SUFFIX = "-tail"
_U32 = struct.Struct("<I")
_REC = struct.Struct("<II")
_SEG = struct.Struct("<BI")
LEVEL = 6


def tail_path(db: Path | str) -> Path:
    return Path(f"{db}{SUFFIX}")


def make_payload(segments: Sequence[tuple[Priority, bytes]], head: dict[str, Any] | None = None) -> bytes:
    """One record's content: ``head`` (new series, acknowledgements) and segments by class."""
    head_b = json.dumps(head, separators=(",", ":")).encode() if head else b""
    parts = [_U32.pack(len(head_b)), head_b]
    for prio, seg in segments:
        parts += [_SEG.pack(int(prio), len(seg)), seg]
    return b"".join(parts)


def parse_payload(data: bytes) -> tuple[dict[str, Any], list[tuple[Priority, memoryview]]]:
    view = memoryview(data)
    (n,) = _U32.unpack_from(view, 0)
    pos = _U32.size + n
    head = json.loads(bytes(view[_U32.size : pos])) if n else {}
    segments = []
    while pos < len(view):
        prio, size = _SEG.unpack_from(view, pos)
        pos += _SEG.size
        segments.append((Priority(prio), view[pos : pos + size]))
        pos += size
    return head, segments


@dataclass(slots=True)
class TailContent:
    """What a tail file held: its header, the payload of every whole record, and how it ended."""

    header: dict[str, Any] = field(default_factory=dict)
    payloads: list[bytes] = field(default_factory=list)
    damaged: str | None = None  # why the file could not be read to its end, if it could not


def read_tail(path: Path) -> TailContent | None:
    """The tail file's content (None when there is none); never raises for a bad file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return TailContent(damaged=f"cannot read {path.name}: {exc}")
    out = TailContent()
    if len(data) < len(MAGIC) + _U32.size:
        # Created and renamed into place whole, so a short file is a write cut short by a crash.
        out.damaged = None if MAGIC.startswith(data[: len(MAGIC)]) else "not a tail file"
        return out
    if not data.startswith(MAGIC):
        out.damaged = "not a tail file"
        return out
    (n,) = _U32.unpack_from(data, len(MAGIC))
    pos = len(MAGIC) + _U32.size
    try:
        out.header = json.loads(data[pos : pos + n])
    except ValueError:
        out.damaged = "the tail's header is unreadable"
        return out
    pos += n
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    while pos + _REC.size <= len(data):
        size, crc = _REC.unpack_from(data, pos)
        body = data[pos + _REC.size : pos + _REC.size + size]
        if len(body) < size:
            break  # cut short: the write the process was in when it died
        if zlib.crc32(body) != crc:
            out.damaged = f"a record of the tail at byte {pos} fails its checksum"
            return out
        try:
            out.payloads.append(inflater.decompress(body))
        except zlib.error as exc:
            out.damaged = f"a record of the tail at byte {pos} does not inflate: {exc}"
            return out
        pos += _REC.size + size
    return out


class TailWriter:
    """Appends records to the tail; a failed write breaks it until the next ``start``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._deflate: Any = None
        self.size = 0
        self.broken: str | None = "not started"

    def start(self, header: dict[str, Any], first: bytes | None = None) -> bool:
        """A new tail, built under a temporary name and renamed into place (never half there)."""
        self.close()
        tmp = self.path.with_name(self.path.name + ".new")
        deflate = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        head = json.dumps(header, separators=(",", ":")).encode()
        data = MAGIC + _U32.pack(len(head)) + head
        if first is not None:
            data += _record(deflate, first)
        fd = -1
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_CLOEXEC, FILE_MODE)
            os.fchmod(fd, FILE_MODE)
            if os.write(fd, data) != len(data):
                raise OSError("short write")
            os.rename(tmp, self.path)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self.broken = f"cannot write {self.path.name}: {exc}"
            return False
        self._fd, self._deflate, self.size, self.broken = fd, deflate, len(data), None
        return True

    def append(self, payload: bytes) -> bool:
        """Write one record; False (and broken) if the disk refused any of it."""
        if self._fd is None or self.broken is not None:
            return False
        data = _record(self._deflate, payload)
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            written, self.broken = -1, f"cannot write {self.path.name}: {exc}"
        if written != len(data):
            self.broken = self.broken or f"cannot write {self.path.name}: short write (disk full?)"
            return False
        self.size += written
        return True

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self.broken = "closed"

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _record(deflate: Any, payload: bytes) -> bytes:
    body = deflate.compress(payload) + deflate.flush(zlib.Z_SYNC_FLUSH)
    return _REC.pack(len(body), zlib.crc32(body)) + body
