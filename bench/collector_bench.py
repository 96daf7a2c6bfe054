"""Collector benchmark: parser cost, and collector processes scraping many backends.

    python bench/collector_bench.py                 # parser + 256 backends at 10 Hz, 3 variants
    python bench/collector_bench.py --parser-only   # just the parser comparison
    python bench/collector_bench.py --scale         # 256x10 Hz, 1,024x10 Hz with 2 processes,
                                                    # 1,024x10 Hz with 1 (deliberate overload)
    python bench/collector_bench.py --scale 512x10:2,256x5:1 --seconds 20

Part 1, parser only (CPU ms per page, one core, no I/O): the collector's
targeted reader, cold (no per-backend memo) and warm (memo, as in the
daemon), against prometheus_client's full parser extracting the same
fields.

Part 2, end to end: page server processes (non-blocking, one socket per
backend on up to 512 loopback ports each, serving the real ~68 KB vLLM 0.33
page with changing values), a private redis-server, and one or more
collector processes, which split the backends through their ownership
leases. Reported per run: pages/s achieved against the target, ticks
skipped per second, collector CPU (% of one core, summed over processes)
and CPU ms per page, and the age of the metrics as a policy would see it
(Redis TIME minus scraped_at, sampled for every backend every 20 ms per 256
backends): p50, p99, max, next to the bound an overloaded collector should
keep (backends / achieved pages/s). Default runs: targeted reader with OS
threads (the daemon's default), with gevent greenlets, and
prometheus_client's full parse with threads (the baseline).

Everything runs on this machine: the servers' and Redis's CPU compete with
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


# -- part 2: the collector processes ------------------------------------------------
def run_collector_process(
    config: str, concurrency: str, parser: str, collector_id: str, metrics_port: str
) -> None:
    """The collector daemon, optionally with the full prometheus_client parse swapped in."""
    if concurrency == "gevent":
        from collector.cli import patch_for_gevent

        patch_for_gevent()
    if parser == "full":
        import collector.worker

        collector.worker.read_metrics = full_read
    from collector.daemon import main

    sys.exit(main(config, collector_id, {"collector__metrics_port": int(metrics_port)}))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def own_counters(port: int) -> dict[str, float]:
    """One collector's own counters: scrapes by outcome ("ok", "timeout", ...) and skipped ticks."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "llmlbd_collector_scrapes_total":
                totals[s.labels["outcome"]] = totals.get(s.labels["outcome"], 0.0) + s.value
            elif s.name == "llmlbd_collector_skipped_ticks_total":
                totals["skipped_ticks"] = s.value
    return totals


def summed_counters(ports: list[int]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for port in ports:
        for name, value in own_counters(port).items():
            totals[name] = totals.get(name, 0.0) + value
    return totals


def end_to_end(
    redis_url: str,
    ports: list[int],
    concurrency: str,
    parser: str,
    hz: float,
    warmup: float,
    seconds: float,
    server_pids: list[int],
    redis_pid: int | None,
    processes: int = 1,
) -> dict:
    import redis

    from tests.collector.ages import ages_reader
    from tests.harness import free_port, wait_for_port

    metrics_ports = [free_port() for _ in range(processes)]
    names = [f"b{i:04d}" for i in range(len(ports))]
    config = {
        "redis": {"url": redis_url},
        "logging": {"level": "warning"},
        "collector": {
            "interval_ms": int(1000 / hz),
            "timeout_ms": 1000,
            "health_interval_ms": 1000,
            "models_refresh_s": 5.0,
        },
        "backends": [{"name": n, "url": f"http://127.0.0.1:{p}"} for n, p in zip(names, ports)],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump(config, f)  # JSON is YAML
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--collector", f.name, concurrency, parser]
            + [f"bench-{i}", str(port)],
            cwd=str(ROOT),
        )
        for i, port in enumerate(metrics_ports)
    ]

    def cpu_now() -> list[float]:
        own = sum(cpu_seconds(p.pid) for p in procs)
        server = sum(cpu_seconds(pid) for pid in server_pids)
        return [own, server, cpu_seconds(redis_pid) if redis_pid else 0.0]

    try:
        for proc, port in zip(procs, metrics_ports):
            wait_for_port(port, timeout=30, process=proc)
        time.sleep(warmup)
        cpu0 = cpu_now()
        counts0, t0 = summed_counters(metrics_ports), time.monotonic()
        ages: list[float] = []
        keys = [f"llmlb:{{default}}:backend:{n}" for n in names]
        # Larger fleets are sampled less often, for the same Redis cost.
        ages_of = ages_reader(client)
        pause = 0.02 * max(1.0, len(keys) / 256)
        while time.monotonic() - t0 < seconds:
            ages.extend(a for a in ages_of(keys=keys) if a >= 0)
            time.sleep(pause)
        elapsed = time.monotonic() - t0
        counts1 = summed_counters(metrics_ports)
        cpu1 = cpu_now()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        client.close()
        os.unlink(f.name)
    pages = counts1.get("ok", 0.0) - counts0.get("ok", 0.0)
    skipped = counts1.get("skipped_ticks", 0.0) - counts0.get("skipped_ticks", 0.0)
    failed = {
        k: v - counts0.get(k, 0.0)
        for k, v in counts1.items()
        if k not in ("ok", "skipped_ticks") and v > counts0.get(k, 0.0)
    }
    ages.sort()
    pick = (
        (lambda q: ages[min(len(ages) - 1, int(q * len(ages)))])
        if ages
        else (lambda q: float("nan"))
    )
    cpu = [(b - a) / elapsed for a, b in zip(cpu0, cpu1)]
    parser_name = "targeted" if parser == "targeted" else "prometheus_client"
    return {
        "run": f"{len(ports)}x{hz:g}Hz {processes}p {parser_name}+{concurrency}",
        "pages_per_s": pages / elapsed,
        "target_pages_per_s": len(ports) * hz,
        "skipped_per_s": skipped / elapsed,
        "collector_cpu_pct": cpu[0] * 100,
        "cpu_ms_per_page": cpu[0] * elapsed * 1000 / pages if pages else float("nan"),
        "age_p50_ms": pick(0.50),
        "age_p99_ms": pick(0.99),
        "age_max_ms": ages[-1] if ages else float("nan"),
        "age_bound_ms": len(ports) / (pages / elapsed) * 1000 if pages else float("nan"),
        "age_samples": len(ages),
        "failed": failed,
        "server_cpu_pct": cpu[1] * 100,
        "redis_cpu_pct": cpu[2] * 100,
    }


class PageFleet:
    """Page server processes for *count* backends (at most 512 ports each)."""

    def __init__(self, count: int) -> None:
        self.procs: list[subprocess.Popen] = []
        self.ports: list[int] = []
        for start in range(0, count, 512):
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", str(min(512, count - start))],
                stdout=subprocess.PIPE,
                text=True,
            )
            self.procs.append(proc)
            assert proc.stdout is not None
            self.ports += json.loads(proc.stdout.readline())

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()


# The scale suite: the target, a fleet split over two processes, and a
# deliberate overload (one process asked for 10,240 pages/s) whose ages must
# stay bounded by about backends / achieved pages/s.
SCALE_SUITE = "256x10:1,1024x10:2,1024x10:1"


def print_row(r: dict) -> None:
    print(
        f"  {r['run']:38s} {r['pages_per_s']:7.0f}/{r['target_pages_per_s']:<6.0f} "
        f"{r['skipped_per_s']:7.0f} {r['collector_cpu_pct']:7.0f}% {r['cpu_ms_per_page']:8.3f} "
        f"{r['age_p50_ms']:7.0f}ms {r['age_p99_ms']:7.0f}ms {r['age_max_ms']:7.0f}ms "
        f"{r['age_bound_ms']:7.0f}ms {r['server_cpu_pct']:6.0f}% {r['redis_cpu_pct']:5.0f}%"
        + (f"  failed: {r['failed']}" if r["failed"] else ""),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", type=int, default=256)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--processes", type=int, default=1, help="collector processes per run")
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window per run")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--runs", default="targeted:threads,targeted:gevent,full:threads")
    ap.add_argument(
        "--scale",
        nargs="?",
        const=SCALE_SUITE,
        help="fleets as BACKENDSxHZ:PROCESSES,... with the default reader and threads "
        f"(no value: {SCALE_SUITE}); replaces --runs",
    )
    ap.add_argument("--parser-only", action="store_true")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--collector", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve)
    if args.collector:
        return run_collector_process(*args.collector)

    print(
        f"page: {PAGE.relative_to(ROOT)} ({PAGE.stat().st_size} bytes), python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    if not args.scale:
        print("\nParser only (CPU ms per page, single thread):")
        for name, ms in parser_bench().items():
            print(f"  {name:38s} {ms:8.3f} ms")
        if args.parser_only:
            return
        plan = [
            (args.backends, args.hz, args.processes, *spec.split(":"))
            for spec in args.runs.split(",")
        ]
    else:
        plan = []
        for spec in args.scale.split(","):
            fleet, _, processes = spec.partition(":")
            backends, _, hz = fleet.partition("x")
            plan.append((int(backends), float(hz), int(processes or 1), "targeted", "threads"))

    from llmlbd.embedded import EmbeddedRedis
    from tests.harness import free_port

    redis_server = EmbeddedRedis(
        runtime_dir=tempfile.mkdtemp(prefix="llmlbd-bench-"), port=free_port()
    )
    redis_server.start()
    fleet = PageFleet(max(backends for backends, *_ in plan))
    try:
        redis_pid = _pid_listening(redis_server.url)
        print(
            f"\nEnd to end: {args.seconds:g} s window after {args.warmup:g} s warm-up; "
            "age = Redis TIME - scraped_at over every backend; bound = backends / achieved pages/s"
        )
        print(
            f"  {'run':38s} {'pages/s achieved/target':>14s} {'skip/s':>7s} {'coll.CPU':>8s} "
            f"{'ms/page':>8s} {'age p50':>9s} {'age p99':>9s} {'age max':>9s} {'bound':>9s} "
            f"{'server':>7s} {'redis':>6s}"
        )
        for backends, hz, processes, parser, concurrency in plan:
            r = end_to_end(
                redis_server.url,
                fleet.ports[:backends],
                concurrency,
                parser,
                hz,
                args.warmup,
                args.seconds,
                fleet.pids,
                redis_pid,
                processes,
            )
            print_row(r)
        print(
            f"load average at the end: {os.getloadavg()[0]:.1f} (other processes share these CPUs)"
        )
    finally:
        fleet.close()
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
