"""gunicorn's gevent worker, serving each connection with llmlbd's own HTTP/1.1 loop.

gunicorn stays the process manager: the arbiter forks, watches and replaces
workers, handles signals and graceful stops, and this worker's gevent
StreamServer accepts connections up to worker_connections. Each connection
is then handed to llmlbd.server.worker.front (request parsing, keep-alive,
client deadlines, one-write responses) instead of gunicorn's parser and
Response: profiled under load, those were the largest share of a plain
request's CPU (docs/benchmarks.md).

The master loads the worker class itself (gunicorn resolves it there), so this
module sits outside llmlbd.server.worker and imports only gunicorn and gevent,
as gunicorn's own gevent worker does; the loop is imported after fork.
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers.ggevent import GeventWorker

__all__ = ["LLMLBWorker"]


class LLMLBWorker(GeventWorker):
    """gunicorn's gevent worker whose connections are served by llmlbd's request loop."""

    front: Any = None

    def run(self) -> None:
        # After fork and after load_wsgi(): the app (llmlbd's ProxyApp) exists.
        from llmlbd.server.worker.front import Server

        app: Any = self.app  # llmlbd's LLMLBApplication, which carries the config
        self.front = Server(self, self.wsgi, app.config.server)
        super().run()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        self.front.serve(client, addr)
