"""HTTP/1.1 response framing, shared by llmlbd's two HTTP clients.

The proxy's upstream client (llmlbd/server/worker/http1.py) and the collector's
GET client (collector/http11.py) differ in what they do around a response
(pooling and one send per request; one deadline and a page-size cap), but read
it the same way: a status line and headers, then a body framed by
Content-Length or chunked encoding. That reading is written once, here.

Bodies are yielded as they arrive, so a chunked SSE stream passes on event by
event. A `Source` is anything with a `buf` bytearray and a `fill()` that reads
more into it (False at end of stream); its timeouts and socket errors pass
through unchanged for the caller to name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

__all__ = [
    "MAX_HEAD_BYTES",
    "FramingError",
    "Head",
    "Source",
    "iter_chunked",
    "iter_length",
    "parse_head",
]

# Status line plus headers, and any one chunk-size or trailer line, stay below this.
MAX_HEAD_BYTES = 64 * 1024


class FramingError(Exception):
    """Bytes that are not a valid response; `kind` is a short stable word
    ("bad_response", "truncated", "too_large") for callers' errors and metrics."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Source(Protocol):
    buf: bytearray

    def fill(self) -> bool: ...


class Head(NamedTuple):
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]  # as sent, in order


def parse_head(head: bytes) -> Head:
    """The status line and header fields of *head* (without the blank line that ends it)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise FramingError("bad_response", f"malformed status line {lines[0][:60]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return Head(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "", headers)


def iter_length(src: Source, length: int) -> Iterator[bytes]:
    """A Content-Length body, piece by piece as it arrives."""
    remaining = length
    while remaining:
        piece = _take(src, remaining)
        if not piece:
            raise FramingError(
                "truncated", f"body cut short: {remaining} of {length} bytes missing"
            )
        remaining -= len(piece)
        yield piece


def iter_chunked(src: Source, max_bytes: int | None = None) -> Iterator[bytes]:
    """A chunked body de-framed on the fly; trailers are read and dropped.

    Chunks that arrived together leave as one piece (for the proxy, one write to
    the client instead of one per SSE event), but whatever is de-framed is handed
    on before any wait for more bytes and before a framing error is raised, so no
    event ever waits for the next one. *max_bytes* caps the total: a body
    announcing more fails before it is read.
    """
    ready = bytearray()
    try:
        total = 0
        while True:
            if ready and b"\r\n" not in src.buf:  # the size line is not here yet
                yield bytes(ready)
                ready.clear()
            line = _line(src)
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise FramingError("bad_response", f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                if ready:
                    yield bytes(ready)
                    ready.clear()
                while _line(src):  # trailers, then the empty line
                    pass
                return
            total += size
            if max_bytes is not None and total > max_bytes:
                raise FramingError("too_large", f"body larger than {max_bytes} bytes")
            while size:
                buf = src.buf
                if not buf:
                    if ready:
                        yield bytes(ready)
                        ready.clear()
                    if not src.fill():
                        raise FramingError("truncated", "connection closed inside a chunk")
                    buf = src.buf
                piece = buf[:size]
                del buf[: len(piece)]
                size -= len(piece)
                ready += piece
            if ready and len(src.buf) < 2:  # reading the CRLF may wait
                yield bytes(ready)
                ready.clear()
            if _line(src):
                raise FramingError("bad_response", "chunk not followed by CRLF")
    except FramingError:
        if ready:
            yield bytes(ready)
        raise


def _take(src: Source, most: int) -> bytes:
    """Up to *most* bytes, reading more only when none are buffered; b"" at end of stream."""
    buf = src.buf
    if not buf and not src.fill():
        return b""
    piece = bytes(buf[:most])
    del buf[: len(piece)]
    return piece


def _line(src: Source) -> bytes:
    buf = src.buf
    while True:
        end = buf.find(b"\r\n")
        if end != -1:
            line = bytes(buf[:end])
            del buf[: end + 2]
            return line
        if len(buf) > MAX_HEAD_BYTES:
            raise FramingError("bad_response", "chunk framing line too long")
        if not src.fill():
            raise FramingError("truncated", "connection closed inside chunk framing")
