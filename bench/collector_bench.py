"""Collector benchmark: parser cost, and one collector scraping 256 backends at 10 Hz.

    python bench/collector_bench.py                 # everything (about 2 minutes)
    python bench/collector_bench.py --parser-only   # just the parser comparison

Part 1, parser only (CPU ms per page, one core, no I/O): the collector's
targeted reader, cold (no per-backend memo) and warm (memo, as in the
daemon), against prometheus_client's full parser extracting the same
fields.

Part 2, end to end: a page server in its own process (non-blocking, one
socket per backend on 256 loopback ports, serving the real ~68 KB vLLM
0.33 page with changing values), a private redis-server, and one collector
process. Reported per run: pages/s, collector CPU (% of one core) and CPU
ms per page, and the age of the metrics as a policy would see it (Redis
TIME minus scraped_at, sampled for every backend every 20 ms): p50, p99,
max. Runs: targeted reader with OS threads (the daemon's default),
targeted reader with gevent greenlets, and prometheus_client's full parse
with threads (the baseline).

Everything runs on this machine: the server's and Redis's CPU compete with
the collector's, so the CPU of each is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGE = ROOT / "tests" / "collector" / "data" / "vllm_v1_0.33.txt"
MODELS = ROOT / "tests" / "collector" / "data" / "vllm_models.json"
TICK = os.sysconf("SC_CLK_TCK")


# -- pages with changing values ----------------------------------------------------
def page_variants(count: int = 8) -> list[bytes]:
    """The real page with the values a live server changes every step."""
    base = PAGE.read_text()
    out = []
    for i in range(count):
        text = base
        for old, new in (
            (
                'model_name="meta-llama/Llama-3.1-8B-Instruct"} 24.0',
                f'model_name="meta-llama/Llama-3.1-8B-Instruct"}} {20 + i}.0',
            ),
            (
                'model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0',
                f'model_name="meta-llama/Llama-3.1-8B-Instruct"}} {i}.0',
            ),
            ("0.41372052207403", f"0.4{i}372052207403"),
            ("3.280442e+06", f"3.28{i}442e+06"),
            ("1.31184e+06", f"1.31{i}84e+06"),
        ):
            text = text.replace(old, new, 1)
        out.append(text.encode())
    return out


# -- part 1: parser only -----------------------------------------------------------
class FullParsePage:
    """prometheus_client's parser over the whole page, behind the reader's samples() interface."""

    def __init__(self, text: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        from collector.exposition import Sample

        self.by_name: dict[str, list] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.by_name.setdefault(s.name, []).append(Sample(s.labels, s.value))

    def samples(self, name: str) -> list:
        return self.by_name.get(name, [])


def full_read(text, plan, memo=None, learned=None):
    from collector.parse import read_page

    return read_page(FullParsePage(text), plan)


def parser_bench() -> dict[str, float]:
    from collector.exposition import ScanMemo
    from collector.parse import read_metrics
    from collector.sources import build_plan

    plan = build_plan()
    pages = [p.decode() for p in page_variants()]

    def cpu_ms_per_page(fn, n):
        fn(0)
        start = time.process_time()
        for i in range(n):
            fn(i)
        return (time.process_time() - start) * 1000 / n

    memo, learned = ScanMemo(), {}
    results = {
        "targeted, cold (no memo)": cpu_ms_per_page(
            lambda i: read_metrics(pages[i % 8], plan), 3000
        ),
        "targeted, warm (per-backend memo)": cpu_ms_per_page(
            lambda i: read_metrics(pages[i % 8], plan, memo, learned), 5000
        ),
        "prometheus_client full parse": cpu_ms_per_page(
            lambda i: full_read(pages[i % 8], plan), 60
        ),
    }
    assert read_metrics(pages[1], plan).values == full_read(pages[1], plan).values
    return results


# -- part 2: page server process ---------------------------------------------------
def serve(count: int) -> None:
    """Serve /metrics, /health, /v1/models on *count* loopback ports; print the ports, run until killed."""
    variants = page_variants()
    metrics = [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=1.0.0; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(v), v)
        for v in variants
    ]
    models_body = MODELS.read_bytes()
    models = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(models_body), models_body)
    )
    health = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    sel = selectors.DefaultSelector()
    ports = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, None)
        ports.append(s.getsockname()[1])
    print(json.dumps(ports), flush=True)
    served = 0
    state: dict[socket.socket, list] = {}  # conn -> [inbuf, outbuf]

    def close(conn):
        sel.unregister(conn)
        state.pop(conn, None)
        conn.close()

    while True:
        for key, events in sel.select():
            sock = key.fileobj
            if key.data is None:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                state[conn] = [b"", b""]
                sel.register(conn, selectors.EVENT_READ, True)
                continue
            st = state[sock]
            if events & selectors.EVENT_READ:
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, ConnectionError):
                    data = None
                if data == b"":
                    close(sock)
                    continue
                if data:
                    st[0] += data
                    while b"\r\n\r\n" in st[0]:
                        request, st[0] = st[0].split(b"\r\n\r\n", 1)
                        path = request.split(b" ", 2)[1]
                        if path == b"/metrics":
                            st[1] += metrics[served % len(metrics)]
                            served += 1
                        elif path == b"/v1/models":
                            st[1] += models
                        else:
                            st[1] += health
            if st[1]:
                try:
                    sent = sock.send(st[1])
                    st[1] = st[1][sent:]
                except BlockingIOError:
                    pass
                except ConnectionError:
                    close(sock)
                    continue
                sel.modify(
                    sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if st[1] else 0), True
                )


# -- part 2: the collector process ---------------------------------------------------
def run_collector_process(config: str, concurrency: str, parser: str) -> None:
    """The collector daemon, optionally with the full prometheus_client parse swapped in."""
    if concurrency == "gevent":
        from collector.cli import patch_for_gevent

        patch_for_gevent()
    if parser == "full":
        import collector.worker

        collector.worker.read_metrics = full_read
    from collector.daemon import main

    sys.exit(main(config, "bench"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def scrape_counts(port: int) -> dict[str, float]:
    """The collector's own scrape counters, summed over backends: outcome -> count."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "llmlbd_collector_scrapes_total":
                totals[s.labels["outcome"]] = totals.get(s.labels["outcome"], 0.0) + s.value
    return totals


# Bench only (standalone Redis): the age (ms, Redis clock) of every backend's metrics.
AGES_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local at = redis.call('HGET', key, 'scraped_at')
  out[i] = at and (now - tonumber(at)) or -1
end
return out
"""


def end_to_end(
    redis_url: str,
    ports: list[int],
    concurrency: str,
    parser: str,
    hz: float,
    warmup: float,
    seconds: float,
    server_pid: int,
    redis_pid: int | None,
) -> dict:
    import redis

    from tests.harness import free_port, wait_for_port

    metrics_port = free_port()
    names = [f"b{i:03d}" for i in range(len(ports))]
    config = {
        "redis": {"url": redis_url},
        "logging": {"level": "warning"},
        "collector": {
            "interval_ms": int(1000 / hz),
            "timeout_ms": 1000,
            "health_interval_ms": 1000,
            "models_refresh_s": 5.0,
            "metrics_port": metrics_port,
        },
        "backends": [{"name": n, "url": f"http://127.0.0.1:{p}"} for n, p in zip(names, ports)],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump(config, f)  # JSON is YAML
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--collector", f.name, concurrency, parser], cwd=str(ROOT)
    )
    try:
        wait_for_port(metrics_port, timeout=30, process=proc)
        time.sleep(warmup)
        cpu0 = (
            cpu_seconds(proc.pid),
            cpu_seconds(server_pid),
            cpu_seconds(redis_pid) if redis_pid else 0.0,
        )
        counts0, t0 = scrape_counts(metrics_port), time.monotonic()
        ages: list[float] = []
        keys = [f"llmlb:{{default}}:backend:{n}" for n in names]
        # One server-side read of every backend's age per sample: a Python
        # pipeline of 256 HGETs every 20 ms would cost the sampler (on the
        # same two cores) more CPU than the collector under test.
        ages_of = client.register_script(AGES_LUA)
        while time.monotonic() - t0 < seconds:
            ages.extend(a for a in ages_of(keys=keys) if a >= 0)
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        counts1 = scrape_counts(metrics_port)
        cpu1 = (
            cpu_seconds(proc.pid),
            cpu_seconds(server_pid),
            cpu_seconds(redis_pid) if redis_pid else 0.0,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        client.close()
        os.unlink(f.name)
    pages = counts1.get("ok", 0.0) - counts0.get("ok", 0.0)
    failed = {
        k: v - counts0.get(k, 0.0)
        for k, v in counts1.items()
        if k != "ok" and v > counts0.get(k, 0.0)
    }
    ages.sort()
    pick = (
        (lambda q: ages[min(len(ages) - 1, int(q * len(ages)))])
        if ages
        else (lambda q: float("nan"))
    )
    cpu = [(b - a) / elapsed for a, b in zip(cpu0, cpu1)]
    return {
        "run": f"{'targeted' if parser == 'targeted' else 'prometheus_client'} + {concurrency}",
        "pages_per_s": pages / elapsed,
        "target_pages_per_s": len(ports) * hz,
        "collector_cpu_pct": cpu[0] * 100,
        "cpu_ms_per_page": cpu[0] * elapsed * 1000 / pages if pages else float("nan"),
        "age_p50_ms": pick(0.50),
        "age_p99_ms": pick(0.99),
        "age_max_ms": ages[-1] if ages else float("nan"),
        "age_samples": len(ages),
        "failed": failed,
        "server_cpu_pct": cpu[1] * 100,
        "redis_cpu_pct": cpu[2] * 100,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", type=int, default=256)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window per run")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--runs", default="targeted:threads,targeted:gevent,full:threads")
    ap.add_argument("--parser-only", action="store_true")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--collector", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve)
    if args.collector:
        return run_collector_process(*args.collector)

    print(
        f"page: {PAGE.relative_to(ROOT)} ({PAGE.stat().st_size} bytes), python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print("\nParser only (CPU ms per page, single thread):")
    for name, ms in parser_bench().items():
        print(f"  {name:38s} {ms:8.3f} ms")
    if args.parser_only:
        return

    from llmlbd.embedded import EmbeddedRedis
    from tests.harness import free_port

    redis_server = EmbeddedRedis(
        runtime_dir=tempfile.mkdtemp(prefix="llmlbd-bench-"), port=free_port()
    )
    redis_server.start()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(args.backends)], stdout=subprocess.PIPE, text=True
    )
    try:
        ports = json.loads(server.stdout.readline())
        redis_pid = _pid_listening(redis_server.url)
        print(
            f"\nEnd to end: {args.backends} backends at {args.hz:g} Hz, "
            f"{args.seconds:g} s window after {args.warmup:g} s warm-up"
        )
        header = (
            f"  {'run':30s} {'pages/s':>9s} {'coll.CPU':>9s} {'CPU ms/pg':>9s} "
            f"{'age p50':>8s} {'age p99':>8s} {'age max':>8s} {'server':>7s} {'redis':>6s}"
        )
        print(header)
        for spec in args.runs.split(","):
            parser, concurrency = spec.split(":")
            r = end_to_end(
                redis_server.url,
                ports,
                concurrency,
                parser,
                args.hz,
                args.warmup,
                args.seconds,
                server.pid,
                redis_pid,
            )
            print(
                f"  {r['run']:30s} {r['pages_per_s']:9.0f} {r['collector_cpu_pct']:8.0f}% "
                f"{r['cpu_ms_per_page']:9.3f} {r['age_p50_ms']:7.0f}ms {r['age_p99_ms']:7.0f}ms "
                f"{r['age_max_ms']:7.0f}ms {r['server_cpu_pct']:6.0f}% {r['redis_cpu_pct']:5.0f}%"
                + (f"  failed: {r['failed']}" if r["failed"] else ""),
                flush=True,
            )
        print(
            f"load average at the end: {os.getloadavg()[0]:.1f} (other processes share these CPUs)"
        )
    finally:
        server.kill()
        server.wait()
        redis_server.stop()


def _pid_listening(url: str) -> int | None:
    """The redis-server's pid, for its CPU figure (None if it cannot be found)."""
    import redis

    try:
        client = redis.Redis.from_url(url)
        pid = int(client.info("server")["process_id"])
        client.close()
        return pid
    except Exception:
        return None


if __name__ == "__main__":
    main()
