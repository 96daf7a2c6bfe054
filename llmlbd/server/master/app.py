"""`llmlbd start` as a gunicorn application: the arbiter, gevent workers, their hooks.

Pre-fork discipline: the master builds the WSGI app (config only); every
socket, Redis client and greenlet is created per worker in post_worker_init.
The arbiter subclass also supervises llmlbd's own children (embedded Redis,
demo backends, collector) from its main loop: no thread in the master.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import structlog
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from llmlbd.config import sizing
from llmlbd.config.loader import Config
from llmlbd.server.master.children import Child
from llmlbd.state.leases import new_worker_id

__all__ = ["LLMLBApplication", "ready_line"]

log = structlog.get_logger("llmlbd.master")


def _url(bind: str) -> str:
    return bind if bind.startswith("unix:") else f"http://{bind}"


def _pools_fields(config: Any) -> dict[str, Any]:
    """Log fields naming the policy and backends (per pool with several pools)."""
    if not config.multi_pool:
        return {"policy": config.lb_policy, "backends": [b.name for b in config.backends]}
    return {
        "pools": {
            pool.name: {
                "policy": pool.lb_policy,
                "models": list(pool.models) + (["(default)"] if pool.default else []),
                "backends": [b.name for b in pool.backends],
            }
            for pool in config.pools
        }
    }


def ready_line(url: str, models: list[str]) -> str:
    """Where a newcomer sends requests, said once the workers can take them."""
    if url.startswith("unix:"):
        target = f"{url[len('unix:') :]} (a Unix socket), path /v1"
    else:
        target = f"{url}/v1"
    listed = f"models: {', '.join(models)}" if models else "GET /v1/models lists the models"
    return f"llmlbd ready: send OpenAI requests to {target} ({listed}); Ctrl-C stops"


class LLMLBArbiter(Arbiter):
    def manage_workers(self) -> None:
        super().manage_workers()
        self.app.supervise_children()  # type: ignore[attr-defined]


class LLMLBApplication(BaseApplication):
    def __init__(
        self,
        config: Config,
        children: list[Child] | None = None,
        overrides: dict[str, Any] | None = None,
        models: list[str] | None = None,
    ) -> None:
        self.config = config
        self.models = list(models or [])  # for the ready line; empty when not known yet
        self.children = list(children or [])
        # CLI flags (--bind, --workers) win over the file at every reload too.
        self.overrides = dict(overrides or {})
        # Built in each worker by load(), after gevent patched it: the master must not
        # import urllib3 or redis, whose direct references to ssl.SSLContext would
        # escape the patch and block a worker's event loop on every TLS handshake.
        self.proxy: Any = None
        super().__init__()

    # gunicorn application protocol --------------------------------------------------------
    def load_config(self) -> None:
        server = self.config.server
        settings = {
            "bind": [server.bind],
            "workers": sizing.workers(server),
            # gunicorn's gevent worker plus client deadlines and one-write responses (llmlbd/server/gworker.py).
            "worker_class": "llmlbd.server.gworker.LLMLBWorker",
            "worker_connections": sizing.worker_connections(server),
            "graceful_timeout": max(1, round(server.graceful_timeout_s)),
            "timeout": 30,
            "keepalive": server.keepalive_s,
            "proc_name": "llmlbd",
            "logger_class": "llmlbd.logs.GunicornLogger",
            "loglevel": self.config.logging.level,
            "pre_fork": self._pre_fork,
            "post_request": self._post_request,
            "post_worker_init": self._post_worker_init,
            "worker_exit": self._worker_exit,
            "child_exit": self._child_exit,
            "when_ready": self._when_ready,
            "on_exit": self._on_exit,
        }
        # Two llmlbd instances on one host must not fight over gunicorn's control socket.
        if "control_socket_disable" in self.cfg.settings:
            settings["control_socket_disable"] = True
        for key, value in settings.items():
            self.cfg.set(key, value)

    def reload(self) -> None:
        """SIGHUP: re-read the config file; new workers start with it, old ones finish.

        An invalid file is logged and ignored: the running config stays.
        """
        if self.config.path:
            from llmlbd.config import ConfigError, load_config

            try:
                fresh = load_config(self.config.path).with_overrides(**self.overrides)
            except ConfigError as exc:
                log.error("reload_rejected", error=str(exc), keeping=self.config.path)
            else:
                if fresh.uses_demo_backends:  # demo backends are started once, by `llmlbd start`
                    fresh.backends = self.config.backends
                if fresh.redis_target() != self.config.redis_target():
                    log.warning(
                        "reload_redis_change_ignored",
                        reason="the Redis location changes only on restart",
                    )
                    fresh.redis = self.config.redis
                    fresh.lb_config.serviceFQDN = self.config.lb_config.serviceFQDN
                self.config = fresh
                log.info(
                    "config_reloaded",
                    path=self.config.path,
                    **_pools_fields(fresh),
                )
        super().reload()

    def load(self) -> Any:
        from llmlbd.server.worker.wsgi import ProxyApp

        self.proxy = ProxyApp(self.config)
        return self.proxy

    def run(self) -> None:
        LLMLBArbiter(self).run()

    # hooks --------------------------------------------------------------------------------
    def _pre_fork(self, server: Any, worker: Any) -> None:
        # Chosen in the master so that child_exit knows whose leases to drop.
        worker.llmlbd_id = new_worker_id()

    def _post_worker_init(self, worker: Any) -> None:
        import gevent

        self.proxy.init_worker(worker.llmlbd_id)
        gevent.spawn(self._close_idle_on_shutdown, worker)
        log.info("worker_ready", worker_id=worker.llmlbd_id, **_pools_fields(self.config))
        # The first worker gunicorn spawned says it once it can serve (when_ready, in the
        # master, runs before any worker booted); replacements and reloads stay quiet.
        if worker.age == 1 and self.config.logging.format == "console":
            # A person at a terminal: one plain line, not a log event to decode.
            print(
                ready_line(_url(self.config.server.bind), self.models), file=sys.stderr, flush=True
            )

    def _close_idle_on_shutdown(self, worker: Any) -> None:
        import gevent

        while worker.alive:
            gevent.sleep(0.2)
        self.proxy.close_idle_connections()

    def _post_request(self, worker: Any, req: Any, environ: dict[str, Any], resp: Any) -> None:
        self.proxy.connection_idle(environ)

    def _worker_exit(self, server: Any, worker: Any) -> None:
        self.proxy.shutdown_worker()

    def _child_exit(self, server: Any, worker: Any) -> None:
        multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if multiproc_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid, multiproc_dir)
        # A worker that died hard (SIGKILL, OOM) could not release its leases: they
        # expire after server.lease_ttl_s and the other workers (or the collector) reap
        # them. The master deliberately holds no Redis client (see __init__).
        # gunicorn logs the death itself.

    def _when_ready(self, server: Any) -> None:
        log.info(
            "llmlbd_ready",
            url=_url(self.config.server.bind),
            **_pools_fields(self.config),
            workers=sizing.workers(self.config.server),
        )

    def _on_exit(self, server: Any) -> None:
        for child in reversed(self.children):
            child.stop()

    def supervise_children(self) -> None:
        for child in self.children:
            try:
                child.supervise()
            except Exception as exc:
                log.error("child_restart_failed", child=child.name, error=str(exc))
