"""Shared pieces of the wrk benchmarks: wrk (run, parse), zero-delay backends, llmlbd, CPU.

Used by bench/overhead.py (the one side-by-side harness: direct, nginx,
vllm-router, llmlbd; peers are started by bench/peerbench/routers.py) and
bench/hotpath_profile.py (worker CPU per request). Everything runs as a real
process on 127.0.0.1 and free ports, stopped (with its process group) on exit.
The backends are bench/zero_backend.py; wrk posts bench/wrk_chat.lua's request.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import LLMLBD, Proc, free_port, wait_for_port  # noqa: E402

CHUNKS = 16  # SSE events per streamed answer of the zero-delay backends
# wrk's request: a 16-token chat completion; STREAM=1 asks for SSE, BEARER=KEY adds a key.
LUA = ROOT / "bench" / "wrk_chat.lua"

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def parse_wrk(output: str) -> dict:
    """Requests/s, requests, latency p50/p99 (ms) and errors (non-2xx + socket errors)
    from `wrk --latency` output."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"(\d+) requests in", output)
    latency = {
        q: float(v) * _UNITS[u]
        for q, v, u in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
    }
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", output))
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket:
        errors += sum(int(n) for n in socket.groups())
    return {
        "rate": float(rate.group(1)) if rate else 0.0,
        "requests": int(count.group(1)) if count else 0,
        "p50_ms": latency.get("50", float("nan")),
        "p99_ms": latency.get("99", float("nan")),
        "errors": errors,
    }


def wrk_popen(
    url: str, connections: int, seconds: float, stream: bool, bearer: str = "", wrk: str = "wrk"
) -> subprocess.Popen[str]:
    """Start one closed-loop wrk (-t1) against POST *url*/v1/chat/completions."""
    env = {"STREAM": "1" if stream else "0", "BEARER": bearer, "PATH": "/usr/bin:/bin"}
    args = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency"]
    return subprocess.Popen(
        args + ["-s", str(LUA), url + "/v1/chat/completions"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def run_wrk(port: int, seconds: float, connections: int = 32, stream: bool = False) -> WrkResult:
    """One wrk run against 127.0.0.1:*port*."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    proc = wrk_popen(f"http://127.0.0.1:{port}", connections, seconds, stream, wrk=wrk)
    parsed = parse_wrk(proc.communicate(timeout=seconds + 60)[0])
    return WrkResult(
        parsed["rate"], parsed["p50_ms"], parsed["p99_ms"], parsed["requests"], parsed["errors"]
    )


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
