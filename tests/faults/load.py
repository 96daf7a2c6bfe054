"""A steady load of mixed streaming and plain chat requests, with one record per request.

``with Load(url, clients=6) as load: ...inject a fault...`` runs *clients*
threads, each sending requests back to back (every other one streaming)
until the block ends; ``load.results`` then holds one `Outcome` per request:
which backend answered (the ``x-llmlbd-backend`` header), the status, the
error code of an OpenAI-shaped error body, whether a stream ended with
``[DONE]`` or with llmlbd's SSE error event, and how long it took.
Threads, not greenlets: the test process is not monkey-patched.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import requests

MODEL = "sim-llama"
BACKEND_HEADER = "x-llmlbd-backend"


@dataclass
class Outcome:
    stream: bool
    started: float  # time.monotonic()
    duration: float = 0.0
    status: int | None = None  # None: no HTTP answer at all
    backend: str | None = None
    error_code: str | None = None  # from a JSON error body or the SSE error event
    done: bool = False  # plain: a full completion; stream: ended with [DONE]
    sse_error: bool = False
    exception: str | None = None  # client-side failure (reset, timeout)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and not self.sse_error

    def describe(self) -> str:
        kind = "stream" if self.stream else "plain"
        return (
            f"{kind} status={self.status} backend={self.backend} code={self.error_code} "
            f"done={self.done} sse_error={self.sse_error} exc={self.exception} "
            f"{self.duration:.2f}s"
        )


def _read_stream(response: requests.Response, outcome: Outcome) -> None:
    for line in response.iter_lines():
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            outcome.done = True
            continue
        payload = json.loads(data)
        if "error" in payload:
            outcome.sse_error = True
            outcome.error_code = payload["error"].get("code")


def _read_plain(response: requests.Response, outcome: Outcome) -> None:
    payload = response.json()
    if response.status_code == 200:
        outcome.done = bool(payload.get("choices"))
    else:
        outcome.error_code = (payload.get("error") or {}).get("code")


def send(url: str, stream: bool, max_tokens: int, timeout: float = 30.0) -> Outcome:
    """One chat request through llmlbd, read to its end."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "tell me about load balancers"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    outcome = Outcome(stream=stream, started=time.monotonic())
    try:
        with requests.post(
            f"{url}/v1/chat/completions", json=body, stream=stream, timeout=timeout
        ) as response:
            outcome.status = response.status_code
            outcome.backend = response.headers.get(BACKEND_HEADER)
            if stream and response.status_code == 200:
                _read_stream(response, outcome)
            else:
                _read_plain(response, outcome)
    except (requests.RequestException, ValueError) as exc:
        outcome.exception = type(exc).__name__
    outcome.duration = time.monotonic() - outcome.started
    return outcome


@dataclass
class Load:
    """*clients* threads sending requests to *url* until stop() (or the with block ends)."""

    url: str
    clients: int = 6
    max_tokens: int = 24
    timeout: float = 30.0
    results: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(index,), daemon=True)
            for index in range(self.clients)
        ]

    def _client(self, index: int) -> None:
        stream = index % 2 == 0
        while not self._stop.is_set():
            outcome = send(self.url, stream, self.max_tokens, self.timeout)
            with self._lock:
                self.results.append(outcome)
            if outcome.exception:
                time.sleep(0.05)  # as a real client backs off: no tight loop on a dead port
            stream = not stream

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Block until at least *count* more requests have ended (the load is flowing)."""
        target = len(self.results) + count
        deadline = time.monotonic() + timeout
        while len(self.results) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.results)} of {target} requests ended")
            time.sleep(0.02)

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return self.results

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
