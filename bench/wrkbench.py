"""Shared pieces of the wrk benchmarks: zero-delay backends, peers, llmlbd, wrk, CPU counters.

Everything runs as a real process on 127.0.0.1 and free ports, stopped (with
its process group) on exit. Peers that are not installed are reported as
missing, never faked:

- nginx: the Debian package (`apt-get install -y nginx wrk`), a private
  instance with `least_conn`, keep-alive upstreams and `proxy_buffering off`
  (as in /work/shared/design/reference/peer-runbook.md);
- vllm-router: `pip install vllm-router==0.1.17` into a venv whose
  `bin/vllm-router` is given with `--vllm-router` (or the VLLM_ROUTER env
  variable), run with `power_of_two` and `RUST_LOG=warn`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import LLMLBD, Proc, free_port, wait_for_http, wait_for_port  # noqa: E402

DEFAULT_VLLM_ROUTER = "/tmp/hotpath-peers/venv-vllm-router/bin/vllm-router"
CHUNKS = 16

# wrk's request: a 16-token chat completion; STREAM=1 asks for SSE.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local stream = os.getenv("STREAM") == "1"
wrk.body = '{"model": "stub-model", "max_tokens": 16, "stream": '
  .. (stream and "true" or "false")
  .. ', "messages": [{"role": "user", "content": "Say hello in sixteen tokens."}]}'
"""


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def _script_path() -> str:
    path = Path(tempfile.gettempdir()) / "llmlbd-bench-wrk-chat.lua"
    if not path.exists() or path.read_text() != WRK_SCRIPT:
        path.write_text(WRK_SCRIPT)
    return str(path)


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port: int, seconds: float, connections: int = 32, stream: bool = False) -> WrkResult:
    """One closed-loop wrk run (-t1) against POST /v1/chat/completions on *port*."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    env = dict(os.environ, STREAM="1" if stream else "0")
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            _script_path(),
            f"http://127.0.0.1:{port}/v1/chat/completions",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: (.*)"):
        found = re.search(pattern, out)
        if found:
            errors += sum(int(n) for n in re.findall(r"\d+", found.group(1)))
    return WrkResult(rps, p50, p99, requests, errors)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


@contextmanager
def zero_backends(count: int = 2, chunks: int = CHUNKS) -> Iterator[list[int]]:
    """*count* bench/zero_backend.py processes; yields their ports."""
    ports = [free_port() for _ in range(count)]
    procs = [
        Proc(
            [
                sys.executable,
                str(ROOT / "bench" / "zero_backend.py"),
                "--port",
                str(port),
                "--name",
                f"zero-{i}",
                "--chunks",
                str(chunks),
            ],
            name=f"zero-{i}",
        )
        for i, port in enumerate(ports)
    ]
    try:
        for port, proc in zip(ports, procs):
            wait_for_port(port, process=proc.popen)
        yield ports
    finally:
        for proc in procs:
            proc.stop()


@contextmanager
def llmlbd(
    backend_ports: list[int],
    workers: int = 2,
    extra: dict | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[LLMLBD]:
    """`llmlbd start` with the default config: only the backends are named (embedded
    Redis on a unix socket, collector on, request log on)."""
    config: dict = {
        "backends": [
            {"url": f"http://127.0.0.1:{port}", "name": f"zero-{i}"}
            for i, port in enumerate(backend_ports)
        ],
        **(extra or {}),
    }
    proxy = LLMLBD(config, workers=workers, name="bench-llmlbd", env=env)
    try:
        yield proxy
    finally:
        proxy.stop()


NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream backends {{ least_conn; {servers} keepalive 64; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://backends; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_buffering off; proxy_read_timeout 600s; }} }}
}}
"""


@contextmanager
def nginx(backend_ports: list[int]) -> Iterator[int | None]:
    """A private nginx (least_conn) in front of the backends; yields its port, or None."""
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        yield None
        return
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-nginx-")
    servers = " ".join(f"server 127.0.0.1:{p};" for p in backend_ports)
    conf = Path(workdir) / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, servers=servers, port=port))
    proc = Proc([binary, "-p", workdir, "-c", str(conf)], name="bench-nginx")
    try:
        wait_for_port(port, process=proc.popen)
        yield port
    finally:
        proc.stop()


@contextmanager
def vllm_router(backend_ports: list[int], binary: str | None = None) -> Iterator[int | None]:
    """vllm-router power_of_two in front of the backends; yields its port, or None."""
    binary = binary or os.environ.get("VLLM_ROUTER") or DEFAULT_VLLM_ROUTER
    if not Path(binary).exists():
        yield None
        return
    port = free_port()
    proc = Proc(
        [
            binary,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--worker-urls",
            *(f"http://127.0.0.1:{p}" for p in backend_ports),
            "--policy",
            "power_of_two",
            "--prometheus-host",
            "127.0.0.1",
            "--prometheus-port",
            str(free_port()),
            "--log-level",
            "warning",
        ],
        name="bench-vllm-router",
        env={"RUST_LOG": "warn"},
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readiness", process=proc.popen)
        yield port
    finally:
        proc.stop()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def settle(seconds: float = 0.5) -> None:
    """A short pause between rounds so one run's tail does not load the next."""
    time.sleep(seconds)
