"""Run one simulated server: a gevent WSGI server plus the engine greenlet, until SIGTERM/SIGINT.

Nothing here monkey-patches: the server, the engine and the fault sleeps all
use gevent's own sockets and ``gevent.sleep``, so the standard library can
stay unpatched even in the sim process.
"""

from __future__ import annotations

import signal
import socket
import struct

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIHandler, WSGIServer

from llmlbd.sim.app import DropConnection, SimApp
from llmlbd.sim.config import SimConfig

__all__ = ["serve"]


class _SimHandler(WSGIHandler):
    def handle_error(self, t, v, tb):
        if isinstance(v, DropConnection):
            # Reset rather than close, so the client sees the connection die
            # (ECONNRESET), not a clean end of a response.
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            self.close_connection = True
            return
        super().handle_error(t, v, tb)


def serve(config: SimConfig) -> int:
    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    if config.refuse_connections:
        # A backend that is down or still loading: connecting gets ECONNREFUSED.
        print(
            f"llmlbd sim: {config.name} is not listening on {config.url} (--refuse-connections)",
            flush=True,
        )
        stop.wait()
        return 0
    app = SimApp(config)
    listener = _Listener(config, app)
    app.refuse_for = listener.refuse_for
    listener.open()
    app.engine.start()
    print(
        f"llmlbd sim: {config.name} serving {config.model} on {config.url} "
        f"(profile {config.profile.name}, time scale {config.time_scale:g})",
        flush=True,
    )
    stop.wait()
    listener.close(timeout=1)
    app.engine.stop()
    if app.kv_events is not None:
        app.kv_events.close()
    return 0


class _Listener:
    """The listening socket, which /debug/faults can close for a while (connection refused)."""

    def __init__(self, config: SimConfig, app: SimApp) -> None:
        self.config = config
        self.app = app
        self.server: WSGIServer | None = None

    def open(self) -> None:
        # Big backlog: a benchmark opens hundreds of connections at once.
        self.server = WSGIServer(
            (self.config.host, self.config.port),
            self.app,
            handler_class=_SimHandler,
            log=None,
            backlog=4096,
        )
        self.server.start()

    def close(self, timeout: float | None = None) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        if timeout is None:
            server.close()  # stop listening; connections already accepted carry on
        else:
            server.stop(timeout=timeout)

    def refuse_for(self, seconds: float) -> None:
        if self.server is None:
            return
        self.close()
        gevent.spawn_later(seconds, self.open)
