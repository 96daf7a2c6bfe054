"""gunicorn's gevent worker with llmlbd's client deadlines (see llmlbd.server.worker.limits).

The master loads the worker class itself (gunicorn resolves it there), so this
module sits outside llmlbd.server.worker and imports only gunicorn and gevent,
as gunicorn's own gevent worker does.
"""

from __future__ import annotations

import weakref
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker

__all__ = ["LLMLBWorker"]


class LLMLBWorker(GeventWorker):  # type: ignore[misc]
    """Deadlines on the request head, and no traceback for a client that stops reading."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Connections (their greenlets) that have had a request: later heads follow the
        # keep-alive rule, not the first-request deadline.
        self._served: weakref.WeakSet[Any] = weakref.WeakSet()

    def timeout_ctx(self) -> Any:
        """The deadline for reading one request head (gunicorn's is keepalive for all)."""
        if gevent.getcurrent() in self._served:
            seconds = self.cfg.keepalive
        else:
            seconds = self.app.config.server.client_header_timeout_s
        return gevent.Timeout(seconds, False)  # False: the connection just ends

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        self._served.add(gevent.getcurrent())
        try:
            return super().handle_request(listener_name, req, sock, addr)
        except TimeoutError:
            # The client left response bytes unread for client_write_timeout_s; its
            # response (and backend slot) were released when gunicorn closed the iterator.
            self.log.info("client_write_timeout: closing the connection of %s", addr)
            raise StopIteration() from None
