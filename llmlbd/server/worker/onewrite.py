"""gunicorn responses that leave in fewer writes (installed by llmlbd.server.gworker after fork).

gunicorn sends a response's status line and headers in one `send` and then
each body piece in another, so a plain proxied answer cost two system calls
to the client (about 10% of a request's worker CPU in bench/hotpath_profile.py)
where one does. `OneWriteResponse` keeps the rendered head until the first
body bytes (or the end of the response) and sends both in the same write;
a chunked response's last piece is still written as it comes, and the
terminating chunk leaves with the head when there was no body at all.

The head is held only while no body byte is known: an empty write (relay.py
yields `b""` to put the headers of a stream on the wire before its first
token) sends it at once, as before.

gunicorn builds its `Response` by name in `gunicorn.http.wsgi.create`, so
the worker points that name at the subclass after fork, in this worker
process only; HTTP/2 responses (their own class) are not affected.
"""

from __future__ import annotations

from typing import Any

from gunicorn.http import wsgi as gunicorn_wsgi

from llmlbd.sockets import send_all

__all__ = ["OneWriteResponse", "install"]


class OneWriteResponse(gunicorn_wsgi.Response):
    headers_sent: bool  # gunicorn's attributes this class reads and writes
    chunked: bool
    headers: list[tuple[str, str]]
    sock: Any
    _head: bytes | None = None

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        self._head = f"{''.join(lines)}\r\n".encode("latin-1")
        self.headers_sent = True  # rendered and owed: gunicorn's error paths see it as sent

    def _flush_head(self, tail: bytes = b"") -> None:
        head, self._head = self._head, None
        if head is not None or tail:
            send_all(self.sock, head + tail if head is not None else tail)

    def write(self, arg: bytes) -> None:
        super().write(arg)
        if not arg:
            self._flush_head()  # an empty write asks for the head now (streams)

    def _emit_body(self, data: bytes) -> None:
        self._flush_head(b"%X\r\n%s\r\n" % (len(data), data) if self.chunked else data)

    def close(self) -> None:
        if not self.headers_sent:
            self.send_headers()
        self._flush_head(b"0\r\n\r\n" if self.chunked else b"")


def install() -> None:
    """Make gunicorn build OneWriteResponse; called by the worker class after fork."""
    setattr(gunicorn_wsgi, "Response", OneWriteResponse)  # noqa: B010 - mypy may not assign a class


# Fail at start, not per request, if a gunicorn upgrade dropped a method overridden here.
for _name in ("send_headers", "write", "_emit_body", "close", "default_headers"):
    if not hasattr(gunicorn_wsgi.Response, _name):
        raise ImportError(f"gunicorn's Response has no {_name}(); llmlbd's worker overrides it")
