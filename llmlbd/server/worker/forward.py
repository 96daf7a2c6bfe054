"""Talk to backends: one keep-alive pool per backend, header hygiene, unbuffered bodies."""

from __future__ import annotations

from urllib.parse import urlsplit

from llmlbd.config.loader import Backend
from llmlbd.server.worker.http1 import (
    BodyError,
    ConnectFailure,
    Endpoint,
    Response,
    UpstreamReadTimeout,
)

__all__ = [
    "Upstreams",
    "request_headers",
    "response_headers",
    "ConnectFailure",
    "UpstreamReadTimeout",
    "BodyError",
    "Response",
]

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


# Never sent upstream: hop-by-hop fields and those the upstream request sets itself.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}


def _connection_tokens(items: list[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in items:
        if name.lower() == "connection":
            tokens.update(token.strip().lower() for token in value.split(","))
    return tokens


def request_headers(
    client_headers: dict[str, str], client_addr: str, scheme: str, host: str
) -> dict[str, str]:
    """Headers to send upstream: the client's (by lower-case name), minus hop-by-hop ones,
    plus forwarding info."""
    connection = client_headers.get("connection")
    drop = _NOT_FORWARDED
    if connection is not None:
        drop = drop | {token.strip().lower() for token in connection.split(",")}
    headers = {name: value for name, value in client_headers.items() if name not in drop}
    if client_addr:
        previous = client_headers.get("x-forwarded-for")
        headers["x-forwarded-for"] = f"{previous}, {client_addr}" if previous else client_addr
    headers.setdefault("x-forwarded-proto", scheme)
    if host:
        headers.setdefault("x-forwarded-host", host)
    return headers


def response_headers(upstream: Response) -> list[tuple[str, str]]:
    """Headers to send the client: the backend's, minus hop-by-hop ones."""
    drop = HOP_BY_HOP | _connection_tokens(upstream.headers)
    return [(name, value) for name, value in upstream.headers if name.lower() not in drop]


class Upstreams:
    """The backends' connection pools, in one worker."""

    def __init__(
        self,
        backends: list[Backend],
        connect_timeout_s: float,
        read_timeout_s: float,
        pool_size: int,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.pool_size = pool_size
        # backend name -> (url, endpoint): a changed URL gets a new endpoint.
        self.endpoints: dict[str, tuple[str, Endpoint]] = {}
        # Outgoing keys by name, from the config: a backend seen again through the Redis
        # membership (which holds no secrets) keeps the key its config entry gave it.
        self.api_keys = {b.name: b.api_key for b in backends if b.api_key}
        for backend in backends:
            self._endpoint(backend)

    def _endpoint(self, backend: Backend) -> Endpoint:
        entry = self.endpoints.get(backend.name)
        if entry is None or entry[0] != backend.url:
            parts = urlsplit(backend.url)
            tls = parts.scheme == "https"
            endpoint = Endpoint(
                parts.hostname or "",
                parts.port or (443 if tls else 80),
                tls,
                self.connect_timeout_s,
                self.read_timeout_s,
                self.pool_size,
            )
            if entry is not None:
                entry[1].close()
            entry = self.endpoints[backend.name] = (backend.url, endpoint)
        return entry[1]

    def sync(self, backends: list[Backend]) -> None:
        """Membership changed: drop the idle connections of backends that left."""
        names = {backend.name for backend in backends}
        for name in [n for n in self.endpoints if n not in names]:
            self.endpoints.pop(name)[1].close()

    def open(
        self, backend: Backend, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> Response:
        """Send the request and return once the status line and headers arrived."""
        base_path = urlsplit(backend.url).path.rstrip("/")
        key = backend.api_key or self.api_keys.get(backend.name)
        if key:  # this backend's own key, never the client's or another's
            headers = {**headers, "authorization": f"Bearer {key}"}
        return self._endpoint(backend).request(method, base_path + path, headers, body)

    def close(self) -> None:
        for _, endpoint in self.endpoints.values():
            endpoint.close()
