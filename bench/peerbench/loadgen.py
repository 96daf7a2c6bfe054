"""The load generator: open-loop (Poisson) or closed-loop clients over keep-alive connections.

Runs under gevent (the CLI monkey-patches its own process). Each request is
timed in simulated seconds (wall seconds / the fleet's time scale): TTFT to
the first SSE event carrying content (non-streaming: to the whole reply), the
gaps between content events (inter-token latency as a client sees it) and the
output tokens from the final usage chunk.

Clients keep their connections alive (a requests.Session per run), as the
OpenAI SDK does; a router that is slow on reused connections shows it here.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable

import gevent
import gevent.pool
import requests
from requests.adapters import HTTPAdapter

from bench.peerbench.results import UNFINISHED, RequestRecord
from bench.peerbench.workloads import Planned, Population, poisson_arrivals

__all__ = ["Director", "OraclePicker", "run_load"]

SESSION_HEADER = "X-Session-ID"  # consistent_hash keys on it; other routers ignore it


class OraclePicker:
    """prefix_cache's rule on the servers' true cache state: the longest cached prefix
    (POST /debug/cache_match on every server) among the servers within the load bound,
    else the least loaded; loads are this client's own in-flight counts."""

    def __init__(self, urls: list[str], session: requests.Session) -> None:
        from llmlbd.config.loader import config_from_dict

        lb = config_from_dict({"lb_policy": "prefix_cache"}).lb_config
        self.gap = getattr(lb, "maxLoadGap", 4)
        self.ratio = getattr(lb, "maxLoadRatio", 1.5)
        self.min_tokens = getattr(lb, "minMatchBlocks", 1) * 16
        self.urls = urls
        self.session = session
        self.inflight = dict.fromkeys(urls, 0)
        self.rng = random.Random(1)

    def _matched(self, url: str, body: dict) -> int:
        try:
            reply = self.session.post(url + "/debug/cache_match", json=body, timeout=30)
            return int(reply.json()["matched_tokens"])
        except (requests.RequestException, ValueError, KeyError):
            return 0

    def pick(self, planned: Planned) -> str:
        order = self.rng.sample(self.urls, len(self.urls))
        low = min(self.inflight.values())
        if planned.path.endswith("/chat/completions"):
            jobs = {url: gevent.spawn(self._matched, url, planned.body) for url in order}
            gevent.joinall(list(jobs.values()))
            matched = {url: job.value or 0 for url, job in jobs.items()}
            bound = max(low + self.gap, low * self.ratio)
            fits = [u for u in order if self.inflight[u] <= bound and matched[u] >= self.min_tokens]
            if fits:
                return max(fits, key=lambda u: (matched[u], -self.inflight[u]))
        return min(order, key=lambda u: self.inflight[u])


class Director:
    """Sends one planned request through the router (or, for the oracle, straight to the
    server the oracle picks) and measures it."""

    def __init__(
        self,
        router_url: str | None,
        headers: dict[str, str],
        backend_urls: list[str],
        time_scale: float,
        timeout: float = 600.0,
    ) -> None:
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(pool_connections=8, pool_maxsize=1024))
        self.router_url = router_url
        self.headers = headers
        self.scale = time_scale
        self.timeout = timeout
        self.oracle = None if router_url else OraclePicker(backend_urls, self.session)

    def close(self) -> None:
        self.session.close()

    def send(self, planned: Planned) -> RequestRecord:
        headers = {**self.headers, **planned.headers}
        if planned.client >= 0:
            headers[SESSION_HEADER] = f"user-{planned.client}"
        started = time.perf_counter()
        url = self.router_url
        if self.oracle is not None:
            url = self.oracle.pick(planned)
            self.oracle.inflight[url] += 1
        record = RequestRecord(-1, critical=planned.critical)
        try:
            with self.session.post(
                url + planned.path,
                data=json.dumps(planned.body),
                headers={"Content-Type": "application/json", **headers},
                stream=True,
                timeout=self.timeout,
            ) as response:
                record.status = response.status_code
                if response.status_code != 200:
                    response.content  # noqa: B018 - drain, so the connection is reused
                elif planned.body.get("stream"):
                    self._read_stream(response, started, record)
                else:
                    response.content  # noqa: B018
                    record.ttft = (time.perf_counter() - started) / self.scale
        except requests.RequestException:
            record.status = -1
        finally:
            if self.oracle is not None:
                self.oracle.inflight[url] -= 1
        record.latency = (time.perf_counter() - started) / self.scale
        return record

    def _read_stream(self, response, started: float, record: RequestRecord) -> None:
        buffer = b""
        last = None
        done = False
        for chunk in response.iter_content(chunk_size=None):
            now = time.perf_counter()
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                line = event.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    continue
                try:
                    parsed = json.loads(data)
                except ValueError:
                    continue
                usage = parsed.get("usage")
                if usage:
                    record.output_tokens = int(usage.get("completion_tokens") or 0)
                choices = parsed.get("choices") or []
                delta = choices[0].get("delta") or {} if choices else {}
                if delta.get("content"):
                    if last is None:
                        record.ttft = (now - started) / self.scale
                    else:
                        record.itl.append((now - last) / self.scale)
                    last = now
        if not done:
            record.status = -2  # the stream ended without [DONE]


def run_load(
    population: Population,
    director: Director,
    rate: float,
    duration_s: float,
    seed: int,
    on_done: Callable[[], None] | None = None,
    grace_s: float = 30.0,
) -> tuple[list[RequestRecord], int, int, float]:
    """Send the workload; return (records, offered, skipped, simulated seconds it took).

    rate > 0: Poisson arrivals for *duration_s* simulated seconds, each one the next
    request of a random idle client. rate == 0: closed loop, every client sends its
    next request as soon as its answer is in, until *duration_s* is up.
    """
    scale = director.scale
    rng = random.Random(seed)
    records: list[RequestRecord] = []
    greenlets: list[gevent.Greenlet] = []
    last_done = [time.perf_counter()]

    def one(planned: Planned) -> None:
        record = director.send(planned)
        records.append(record)
        population.finished(planned, record.ok)
        last_done[0] = time.perf_counter()
        if on_done is not None:
            on_done()

    started = time.perf_counter()
    offered = skipped = 0
    if rate > 0:
        for at in poisson_arrivals(rate, duration_s, rng):
            gevent.sleep(max(0.0, started + at * scale - time.perf_counter()))
            offered += 1
            if not population.has_idle():
                skipped += 1
                continue
            greenlets.append(gevent.spawn(one, population.next(rng)))
    else:
        end = started + duration_s * scale

        def loop() -> None:
            while time.perf_counter() < end and population.has_idle():
                one(population.next(rng))

        clients = max(1, population.idle_count())
        greenlets = [gevent.spawn(loop) for _ in range(clients)]
        gevent.joinall(greenlets, timeout=duration_s * scale)
    gevent.joinall(greenlets, timeout=grace_s * scale)
    if rate <= 0:
        offered = len(records) + sum(1 for g in greenlets if not g.dead)
    unfinished = [g for g in greenlets if not g.dead]
    gevent.killall(unfinished, block=True, timeout=5)
    # A request still open after the grace period is cut: it counts as failed, and its
    # TTFT as infinite, so a router that builds a backlog cannot hide it from the p90.
    records.extend(RequestRecord(UNFINISHED, ttft=math.inf) for _ in unfinished)
    took = (max(last_done[0], started) - started) / scale
    return records, offered, skipped, took


def warm_up(population: Population, director: Director, concurrency: int = 64) -> int:
    """Send the population's warm-up requests (first turns), a few at a time; not measured."""
    pool = gevent.pool.Pool(concurrency)
    planned = population.warmup()

    def one(p: Planned) -> None:
        population.finished(p, director.send(p).ok)

    for item in planned:
        # finished() makes the user idle again; warm-up turns were all planned up front.
        pool.spawn(one, item)
    pool.join()
    return len(planned)
