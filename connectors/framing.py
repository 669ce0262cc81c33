"""A field connection's byte stream cut into frames: what a protocol says about its
frames (:class:`Framing`) and the bounded splitter that uses it (:class:`Splitter`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol as TypingProtocol

__all__ = ["Framing", "Splitter"]


class Framing(TypingProtocol):
    """Where frames start and how long they are: pure, no state."""

    @property
    def starts(self) -> tuple[bytes, ...]:
        """The bytes every frame starts with (several: encodings)."""
        ...

    def size(self, buf: bytes | bytearray) -> int | None:
        """Length of the frame candidate at the start of ``buf`` (which begins with a
        start marker); None if more bytes are needed to tell. Raises ValueError when
        the header cannot be a frame's."""
        ...

    def complete(self, frame: bytes) -> bool:
        """Whether the candidate ends as a frame must (end char, CRLF); if not, the
        bytes up to the next start marker go to the decoder, which says what is wrong
        (a declared length that is not the actual one, most often)."""
        ...


class Splitter:
    """A connection's byte stream -> frames and garbage runs, in bounded memory.

    ``feed`` returns ``("frame", bytes, length)`` and ``("garbage", kept, total)``
    items. Bytes before a start marker, a header no frame has and a frame over
    ``max_frame`` are garbage; a candidate whose end is wrong is handed on up to the next
    start marker (its decoder rejects it with the reason). After either, the splitter
    looks for the next start marker. The buffer never holds more than ``max_frame``
    bytes of a frame plus one read.
    """

    def __init__(self, framing: Framing, max_frame: int) -> None:
        self.framing = framing
        self.max_frame = max_frame
        self.buf = bytearray()
        self.garbage_total = 0  # bytes of garbage in the current run
        self._garbage = bytearray()  # its first max_frame bytes

    def _junk(self, data: bytes | bytearray) -> None:
        room = self.max_frame - len(self._garbage)
        if room > 0:
            self._garbage += data[:room]
        self.garbage_total += len(data)

    def _flush_garbage(self) -> Iterator[tuple[str, bytes, int]]:
        if self.garbage_total:
            yield "garbage", bytes(self._garbage), self.garbage_total
            self._garbage.clear()
            self.garbage_total = 0

    def _next_start(self, begin: int) -> int:
        """Index of the first start marker at or after ``begin`` whose header could be a
        frame's (a one-byte marker such as SOH also occurs inside frames); where a
        marker may be cut by the buffer's end, that index; else the buffer length."""
        buf, best = self.buf, len(self.buf)
        for marker in self.framing.starts:
            i = buf.find(marker, begin)
            while 0 <= i < best and not self._plausible(i):
                i = buf.find(marker, i + 1)
            if i < 0:  # a marker may begin in the last len-1 bytes
                i = max(begin, len(buf) - len(marker) + 1)
                while i < len(buf) and not marker.startswith(bytes(buf[i:])):
                    i += 1
            best = min(best, i)
        return best

    def _plausible(self, i: int) -> bool:
        try:
            self.framing.size(self.buf[i : i + 64])
        except ValueError:
            return False
        return True

    def feed(self, data: bytes) -> list[tuple[str, bytes, int]]:
        self.buf += data
        out: list[tuple[str, bytes, int]] = []
        buf, framing = self.buf, self.framing
        while buf:
            # The common case first, as the general path below takes it: a whole frame
            # that ends as it must at the start of the buffer (a marker whose header is
            # a frame's is where that path starts), without looking for the next marker.
            if buf.startswith(framing.starts):
                try:
                    size = framing.size(buf)
                except ValueError:
                    size = None
                if size is not None and 0 < size <= self.max_frame and len(buf) >= size:
                    frame = bytes(buf[:size])
                    if framing.complete(frame):
                        if self.garbage_total:
                            out.extend(self._flush_garbage())
                        out.append(("frame", frame, size))
                        del buf[:size]
                        continue
            start = self._next_start(0)
            if start:
                self._junk(self.buf[:start])
                del self.buf[:start]
                if not self.buf:
                    break
            if not any(self.buf.startswith(m) for m in self.framing.starts):
                break  # a marker cut by the end of what came so far
            try:
                size = self.framing.size(self.buf)
            except ValueError:
                size = -1
            if size is None and len(self.buf) <= self.max_frame:
                break  # more bytes will tell
            if size is None or size < 0 or size > self.max_frame:
                self._skip_one()
                continue
            if len(self.buf) < size:
                break
            if not self.framing.complete(bytes(self.buf[:size])):
                size = self._next_start(1)  # the decoder says what is wrong with it
            out.extend(self._flush_garbage())
            out.append(("frame", bytes(self.buf[:size]), size))
            del self.buf[:size]
        if self.garbage_total >= self.max_frame:  # a long run: report what it kept so far
            out.extend(self._flush_garbage())
        return out

    def _skip_one(self) -> None:
        """Not a frame here: garbage up to the next start marker after this one."""
        nxt = self._next_start(1)
        self._junk(self.buf[:nxt])
        del self.buf[:nxt]

    def pending(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self.buf)

    def close(self) -> list[tuple[str, bytes, int]]:
        """At the connection's end: what is left is garbage (an incomplete frame)."""
        if self.buf:
            self._junk(self.buf)
            self.buf.clear()
        return list(self._flush_garbage())
