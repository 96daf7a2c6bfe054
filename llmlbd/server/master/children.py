"""Processes `llmlbd start` runs beside gunicorn on a single VM: embedded Redis,
demo backends, the collector. The arbiter checks them every loop and restarts
one that died; they die with llmlbd (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import structlog

from llmlbd.embedded import EmbeddedRedis, _die_with_parent
from llmlbd.exits import ADDRESS_IN_USE

__all__ = ["Child", "CommandChild", "RedisChild"]

log = structlog.get_logger("llmlbd.children")
MAX_BACKOFF_S = 30.0


class Child:
    name = "child"
    # Restarts back off from 1 s to 30 s so a child that cannot start does not spin.
    _backoff_s = 0.0
    _next_start = 0.0

    _said_address_in_use = False

    def start(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def exit_status(self) -> int | None:
        """The status the child exited with, when known."""
        return None

    def supervise(self) -> None:
        if self.alive():
            self._backoff_s = 0.0
            return
        now = time.monotonic()
        if now < self._next_start:
            return
        if self.exit_status() == ADDRESS_IN_USE:
            # Restarting cannot free the port: retry at the slowest pace, say so once.
            self._backoff_s = MAX_BACKOFF_S
            if not self._said_address_in_use:
                self._said_address_in_use = True
                log.error(
                    "child_address_in_use",
                    child=self.name,
                    action=f"retrying every {MAX_BACKOFF_S:g} s",
                    hint="another llmlbd on this host? give this one other ports",
                )
        else:
            self._backoff_s = min(MAX_BACKOFF_S, max(1.0, self._backoff_s * 2))
            log.warning(
                "child_died", child=self.name, action="restart", next_retry_s=self._backoff_s
            )
        self._next_start = now + self._backoff_s
        self.start()


class RedisChild(Child):
    name = "embedded-redis"

    def __init__(self, server: EmbeddedRedis) -> None:
        self.server = server

    def start(self) -> None:
        self.server.start()
        log.info("embedded_redis_started", binary=self.server.binary, url=self.server.url)

    def alive(self) -> bool:
        return self.server.process is not None and self.server.process.poll() is None

    def stop(self) -> None:
        self.server.stop()


class CommandChild(Child):
    def __init__(
        self,
        name: str,
        args: list[str],
        ready: Callable[[], bool] | None = None,
        ready_timeout_s: float = 20.0,
    ) -> None:
        self.name = name
        self.args = args
        # Only the master talks to systemd (NotifyAccess=main): a child that saw
        # NOTIFY_SOCKET would send READY=1 that systemd rejects with a warning. And a
        # child's own Prometheus metrics must not land in the proxy workers' files.
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("NOTIFY_SOCKET", "PROMETHEUS_MULTIPROC_DIR")
        }
        self.ready = ready
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Output goes to our stderr, so journald keeps it with llmlbd's own lines.
        self.process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr,
            stderr=sys.stderr,
            env=self.env,
            preexec_fn=_die_with_parent,
        )
        if self.ready is None:
            return
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.process.returncode}")
            if self.ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} was not ready within {self.ready_timeout_s:.0f} s")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_status(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
