"""Real processes for tests: free ports, waiting for sockets, and cleanup that always runs."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def _listen_range() -> tuple[int, int]:
    """Ports for the servers tests start: below the kernel's ephemeral range, from which
    every outgoing connection takes its local port. A port picked inside that range can be
    taken by a concurrent test's client connection between the pick and the server's bind
    (seen: a stub backend exiting on EADDRINUSE while the failover test ran beside it)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (10_000, low - 1) if low > 12_000 else (low, 65_535)


_PORTS = random.SystemRandom()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port nothing listens on now, outside the ephemeral range (see _listen_range)."""
    return free_port_run(1)


def free_port_run(count: int) -> int:
    """A free port p with p + 1 ... p + count - 1 free too (a demo fleet takes consecutive
    ports from demo.base_port), outside the ephemeral range."""
    low, high = _listen_range()
    while True:
        port = _PORTS.randint(low, high - count + 1)
        if all(_bindable(port + offset) for offset in range(count)):
            return port


def wait_for_port(
    port: int,
    host: str = "127.0.0.1",
    timeout: float = 15.0,
    process: subprocess.Popen | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.returncode} before port {port} opened"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout} s")


def wait_for_http(
    url: str, timeout: float = 20.0, status: int = 200, process: subprocess.Popen | None = None
) -> requests.Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            # Connection: close, so no idle keep-alive connection holds a worker at shutdown.
            response = requests.get(url, timeout=1, headers={"Connection": "close"})
            if response.status_code == status:
                return response
            last = response.status_code
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {status} within {timeout} s (last: {last})")


def wait_until(
    predicate, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"
):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{message} not reached within {timeout} s")


def start_threads(count: int, target, *args) -> tuple[list, list]:
    """Start *count* threads running target(*args, results, index); each stores its
    outcome in results[index]. Returns (threads, results)."""
    import threading

    results: list = [None] * count
    threads = [
        threading.Thread(target=target, args=(*args, results, index)) for index in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads, results


def join_all(threads: list) -> None:
    for thread in threads:
        thread.join()


class Proc:
    """A child process whose output goes to a log file, stopped (and its group killed) on close."""

    def __init__(self, args: list[str], name: str, env: dict | None = None, cwd: str | None = None):
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        # Not a with-block: the log stays open for the life of the child; close() closes it.
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd or str(ROOT),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever it left behind (gunicorn workers, sim servers) goes with it.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        return self.popen.returncode


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class LLMLBD:
    """A real `llmlbd start` (gunicorn master + gevent workers) on a free port.

    *config* is the YAML config as a dict; server.bind is filled in. The
    process runs in its own session so stop() takes its workers down too.
    """

    def __init__(
        self,
        config: dict,
        workers: int = 2,
        env: dict | None = None,
        name: str = "llmlbd",
        wait: bool = True,
    ):
        import yaml

        self.port = free_port()
        config = dict(config)
        server = dict(config.get("server") or {})
        server.setdefault("bind", f"127.0.0.1:{self.port}")
        server.setdefault("workers", workers)
        config["server"] = server
        config.setdefault("logging", {"level": "info"})
        self.config = config
        handle, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".yaml")
        with os.fdopen(handle, "w") as out:
            yaml.safe_dump(config, out)
        self.config_path = path
        self.runtime_dir = tempfile.mkdtemp(prefix=f"{name}-run-")
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = Proc(
            [
                sys.executable,
                "-m",
                "llmlbd",
                "start",
                "--config",
                path,
                "--runtime-dir",
                self.runtime_dir,
            ],
            name=name,
            env=env,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        try:
            wait_for_http(f"{self.url}/healthz", timeout=timeout, process=self.proc.popen)
            # Every worker must have booted, not just the first one.
            wait_until(
                lambda: self.proc.log().count('"worker_ready"') >= self.config["server"]["workers"],
                timeout=timeout,
                message="all workers ready",
            )
        except Exception:
            print(self.proc.log()[-5000:])
            self.stop()
            raise

    def log(self) -> str:
        return self.proc.log()

    def worker_pids(self) -> list[int]:
        import json as _json

        pids = []
        for line in self.log().splitlines():
            if '"worker_ready"' in line:
                try:
                    pids.append(_json.loads(line)["pid"])
                except ValueError:
                    pass
        return pids

    def stop(self, timeout: float = 15.0) -> int | None:
        return self.proc.stop(timeout)

    def __enter__(self) -> LLMLBD:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class StubBackends:
    """K real stub HTTP backends (tests/fakeserver.py, stub mode), one process each."""

    def __init__(self, count: int, model: str = "stub-model"):
        self.ports = [free_port() for _ in range(count)]
        self.names = [f"stub-{i}" for i in range(count)]
        self.procs = [
            Proc(
                python_module(
                    "tests.fakeserver", "--port", str(port), "--name", name, "--model", model
                ),
                name=name,
            )
            for port, name in zip(self.ports, self.names)
        ]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        try:
            for url, proc in zip(self.urls, self.procs):
                wait_for_http(f"{url}/health", process=proc.popen)
        except Exception:
            self.stop()
            raise

    def config(self) -> list[dict]:
        return [{"url": url, "name": name} for url, name in zip(self.urls, self.names)]

    def inflight(self) -> dict[str, int]:
        return {
            name: requests.get(f"{url}/stub/inflight", timeout=5).json()["inflight"]
            for name, url in zip(self.names, self.urls)
        }

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop(5)

    def __enter__(self) -> StubBackends:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
