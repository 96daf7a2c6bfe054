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
        print(f"llmlbd sim: {config.name} is not listening on {config.url} (--refuse-connections)",
              flush=True)
        stop.wait()
        return 0
    app = SimApp(config)
    # Big backlog: a benchmark opens hundreds of connections at once.
    server = WSGIServer((config.host, config.port), app, handler_class=_SimHandler, log=None,
                        backlog=4096)
    server.start()
    app.engine.start()
    print(f"llmlbd sim: {config.name} serving {config.model} on {config.url} "
          f"(profile {config.profile.name}, time scale {config.time_scale:g})", flush=True)
    stop.wait()
    server.stop(timeout=1)
    app.engine.stop()
    return 0
