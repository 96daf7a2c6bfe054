"""Talk to backends: pooled keep-alive connections, header hygiene, unbuffered streaming."""

from __future__ import annotations

from typing import Iterator
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError, ReadTimeoutError

from llmlbd.config.loader import Backend

__all__ = ["Upstreams", "request_headers", "response_headers", "iter_body",
           "ConnectFailure", "UpstreamReadTimeout"]

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})


class ConnectFailure(Exception):
    """The backend could not be reached or dropped the connection before answering."""


class UpstreamReadTimeout(Exception):
    """The backend accepted the request but said nothing for read_timeout_s."""


def _connection_tokens(headers: dict[str, str] | list[tuple[str, str]]) -> set[str]:
    items = headers.items() if isinstance(headers, dict) else headers
    tokens: set[str] = set()
    for name, value in items:
        if name.lower() == "connection":
            tokens.update(token.strip().lower() for token in value.split(","))
    return tokens


def request_headers(client_headers: dict[str, str], client_addr: str,
                    scheme: str, host: str) -> dict[str, str]:
    """Headers to send upstream: the client's, minus hop-by-hop ones, plus forwarding info."""
    drop = HOP_BY_HOP | _connection_tokens(client_headers) | {"host", "content-length"}
    headers = {name: value for name, value in client_headers.items() if name not in drop}
    if client_addr:
        previous = client_headers.get("x-forwarded-for")
        headers["x-forwarded-for"] = f"{previous}, {client_addr}" if previous else client_addr
    headers.setdefault("x-forwarded-proto", scheme)
    if host:
        headers.setdefault("x-forwarded-host", host)
    return headers


def response_headers(upstream: urllib3.BaseHTTPResponse) -> list[tuple[str, str]]:
    """Headers to send the client: the backend's, minus hop-by-hop ones."""
    items = list(upstream.headers.items())
    drop = HOP_BY_HOP | _connection_tokens(items)
    return [(name, value) for name, value in items if name.lower() not in drop]


class Upstreams:
    """One keep-alive connection pool per backend, in one worker."""

    def __init__(self, backends: list[Backend], connect_timeout_s: float,
                 read_timeout_s: float, pool_size: int) -> None:
        self.timeout = urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s)
        self.pool_size = pool_size
        # backend name -> (url, pool): a changed URL gets a new pool.
        self.pools: dict[str, tuple[str, urllib3.HTTPConnectionPool]] = {}
        for backend in backends:
            self._pool(backend)

    def _pool(self, backend: Backend) -> urllib3.HTTPConnectionPool:
        entry = self.pools.get(backend.name)
        if entry is None or entry[0] != backend.url:
            # block=False: a burst beyond pool_size opens extra connections instead of waiting.
            pool = urllib3.connection_from_url(backend.url, maxsize=self.pool_size, block=False,
                                               timeout=self.timeout, retries=False)
            if entry is not None:
                entry[1].close()
            entry = self.pools[backend.name] = (backend.url, pool)
        return entry[1]

    def sync(self, backends: list[Backend]) -> None:
        """Membership changed: drop the idle connections of backends that left."""
        names = {backend.name for backend in backends}
        for name in [n for n in self.pools if n not in names]:
            self.pools.pop(name)[1].close()

    def open(self, backend: Backend, method: str, path: str, headers: dict[str, str],
             body: bytes | None) -> urllib3.BaseHTTPResponse:
        """Send the request and return once the status line and headers arrived."""
        pool = self._pool(backend)
        base_path = urlsplit(backend.url).path.rstrip("/")
        try:
            return pool.urlopen(
                method, base_path + path, body=body, headers=headers,
                retries=False, redirect=False, assert_same_host=False,
                preload_content=False, decode_content=False, release_conn=False)
        except ReadTimeoutError as exc:
            raise UpstreamReadTimeout(str(exc)) from None
        except (HTTPError, OSError) as exc:
            raise ConnectFailure(_describe(exc)) from None

    def close(self) -> None:
        for _, pool in self.pools.values():
            pool.close()


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc) or type(exc).__name__


def iter_body(upstream: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """Yield the response body as the backend sends it, never waiting to fill a buffer.

    Chunked responses (SSE from vLLM) come out one HTTP chunk at a time;
    others in whatever the socket has ready (read1).
    """
    if upstream.chunked and upstream.supports_chunked_reads():
        for chunk in upstream.read_chunked(decode_content=False):
            if chunk:
                yield chunk
        return
    while True:
        data = upstream.read1(65536, decode_content=False)
        if not data:
            return
        yield data
