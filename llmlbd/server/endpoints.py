"""The methods each endpoint llmlbd knows takes; any other method gets llmlbd's own 405.

Paths not listed here are forwarded with whatever method they came with (a
backend may serve more than llmlbd knows of). OPTIONS is always forwarded:
it is a CORS preflight, which the backend answers.
"""

from __future__ import annotations

import ipaddress

from llmlbd.errors import Forbidden, MethodNotAllowed

__all__ = ["check_method", "check_metrics_peer"]

_POST = ("POST",)
_GET = ("GET", "HEAD")
ALLOWED_METHODS: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": _POST,
    "/v1/completions": _POST,
    "/v1/embeddings": _POST,
    "/v1/responses": _POST,
    "/v1/score": _POST,
    "/v1/rerank": _POST,
    "/rerank": _POST,
    "/pooling": _POST,
    "/tokenize": _POST,
    "/detokenize": _POST,
    "/v1/audio/transcriptions": _POST,
    "/v1/audio/translations": _POST,
    "/v1/models": _GET,
    "/healthz": _GET,
    "/health": _GET,
    "/readyz": _GET,
    "/metrics": _GET,
}


def check_method(method: str, path: str) -> None:
    """Raise MethodNotAllowed (with the Allow list) when *path* is known and *method* is not its."""
    allowed = ALLOWED_METHODS.get(path)
    if allowed is None or method in allowed or method == "OPTIONS":
        return
    raise MethodNotAllowed(
        f"{path} does not take {method}; use {' or '.join(allowed)}", allow=allowed
    )


def check_metrics_peer(environ: dict[str, object], public: bool) -> None:
    """/metrics is an admin surface on the public port: loopback peers only, unless *public*.

    A separate metrics listener would need one port per worker (they share the
    registry through files, not a socket); the peer rule keeps one port.
    """
    if public:
        return
    peer = str(environ.get("REMOTE_ADDR") or "")
    if not peer:
        return  # a Unix socket: only local processes can connect
    try:
        loopback = ipaddress.ip_address(peer.split("%")[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise Forbidden(
            "/metrics answers loopback clients only; set server.public_metrics: true to expose it"
        )
