"""The receive buffer every stream framer shares: bounded, with resync bookkeeping.

A framer appends what it reads to ``_buffer``, takes frames off its front, and
``_discard``s bytes that belong to no frame. A run of such bytes counts as one framing
error, however many reads it came in (so chunking never changes the count);
``skipped_bytes`` counts the bytes themselves. Taking a good frame ends the run.
"""

from __future__ import annotations


class StreamBuffer:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._in_sync = True
        self.frames = 0
        self.framing_errors = 0
        self.skipped_bytes = 0

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buffer)

    def reset(self) -> None:
        """Drop a partial frame (a timed-out poll, a reopened port, a long silence)."""
        self._discard(len(self._buffer))

    def _garbage_in(self, dropped: bytes) -> int:
        """How many of the dropped bytes count as garbage (a protocol may spare some)."""
        return len(dropped)

    def _discard(self, count: int) -> None:
        if count <= 0:
            return
        garbage = self._garbage_in(bytes(self._buffer[:count]))
        del self._buffer[:count]
        if garbage:
            self.skipped_bytes += garbage
            if self._in_sync:
                self.framing_errors += 1
                self._in_sync = False

    def _resynced(self) -> None:
        """A good frame was taken: the next garbage starts a new framing error."""
        self.frames += 1
        self._in_sync = True
