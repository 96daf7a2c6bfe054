"""Measure the timing a load balancer sees from a vLLM-compatible server, real or simulated.

    python scripts/real_vllm/calibrate.py http://127.0.0.1:8199 [--model tiny-llama]

Prints JSON: mean inter-token latency at several batch sizes, time to first
token for cold prompts of several lengths and for the same prompts again
(prefix-cache hits), and the prefix-cache counters' movement. Run it against
the real server and against ``llmlbd sim --profile ...`` to compare, or to
fit a profile's step_overhead_s / per_token_s / per_context_ktoken_s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import threading
import time
import uuid

import requests
from prometheus_client.parser import text_string_to_metric_families


def counter(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=10).text
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    )


def stream(url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, list[float]]:
    """(time to first token, arrival times of every content chunk) for one streamed completion."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "temperature": 0,
    }
    start = time.monotonic()
    arrivals = []
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith(b"data: {"):
                arrivals.append(time.monotonic() - start)
    return arrivals[0], arrivals


VOCABULARY = [
    "the",
    "tenant",
    "shall",
    "keep",
    "the",
    "premises",
    "in",
    "good",
    "repair",
    "and",
    "pay",
    "for",
    "water",
    "when",
    "the",
    "server",
    "answers",
    "a",
    "question",
    "from",
    "the",
    "queue",
    "with",
    "a",
    "simple",
    "reply",
]


def words(count: int, salt: str) -> str:
    return salt + " " + " ".join(VOCABULARY[i % len(VOCABULARY)] for i in range(count))


def itl_at(url: str, model: str, concurrency: int, max_tokens: int) -> float:
    gaps: list[float] = []
    lock = threading.Lock()

    def one():
        _, arrivals = stream(url, model, words(60, uuid.uuid4().hex), max_tokens)
        # Skip the first gaps while the batch is still filling up.
        tail = arrivals[len(arrivals) // 4 :]
        with lock:
            gaps.extend(b - a for a, b in itertools.pairwise(tail))

    threads = [threading.Thread(target=one) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statistics.mean(gaps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-words", default="100,500,1000")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    model = args.model or requests.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
    stream(url, model, "warm up", 4)
    result = {"url": url, "model": model, "itl_s": {}, "ttft_s": {}}
    for concurrency in (1, 8, 32):
        result["itl_s"][concurrency] = round(itl_at(url, model, concurrency, args.max_tokens), 5)
    for count in (int(c) for c in args.prompt_words.split(",")):
        prompt = words(count, uuid.uuid4().hex)
        tokens = requests.post(
            url + "/tokenize", json={"model": model, "prompt": prompt}, timeout=10
        ).json()["count"]
        queries, hits = (
            counter(url, "vllm:prefix_cache_queries_total"),
            counter(url, "vllm:prefix_cache_hits_total"),
        )
        cold, _ = stream(url, model, prompt, 2)
        warm, _ = stream(url, model, prompt + " again", 2)
        result["ttft_s"][tokens] = {
            "cold": round(cold, 4),
            "warm": round(warm, 4),
            "prefix_queries": counter(url, "vllm:prefix_cache_queries_total") - queries,
            "prefix_hits": counter(url, "vllm:prefix_cache_hits_total") - hits,
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
