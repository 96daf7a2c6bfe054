"""Optional client API keys (server.api_keys_file) and the Authorization header toward backends.

Keys are kept only as SHA-256 digests. A presented key is hashed and compared
with every digest through hmac.compare_digest, always all of them, so the
time taken says nothing about which key, or how much of one, matched.
"""

from __future__ import annotations

import hashlib
import hmac

import structlog

from llmlbd.errors import InvalidApiKey

__all__ = ["ApiKeys", "read_keys"]

log = structlog.get_logger("llmlbd.proxy")


def read_keys(path: str) -> frozenset[bytes]:
    """SHA-256 digests of the keys in *path* (one a line; blank lines and # comments skipped)."""
    with open(path, encoding="utf-8") as source:
        keys = [line.strip() for line in source]
    digests = frozenset(
        hashlib.sha256(key.encode()).digest() for key in keys if key and not key.startswith("#")
    )
    if not digests:
        raise ValueError(f"{path} holds no API key")
    return digests


class ApiKeys:
    """The accepted keys of one worker (read at worker start: SIGHUP starts new workers)."""

    def __init__(self, path: str | None) -> None:
        self.digests: frozenset[bytes] = frozenset()
        if not path:
            return
        try:
            self.digests = read_keys(path)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            # `llmlbd start` checked the file; if a reload finds it broken, fail closed.
            log.error("api_keys_unreadable", path=path, error=str(exc), effect="every request 401")
            self.digests = frozenset({b"no key hashes to this"})

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def check(self, authorization: str) -> None:
        """Raise InvalidApiKey unless *authorization* is `Bearer <a listed key>`."""
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise InvalidApiKey(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            )
        # Header values arrive as latin-1 text: encoding back gives the bytes sent, so a
        # UTF-8 key in the file matches the same key on the wire.
        presented = hashlib.sha256(key.strip().encode("latin-1", "replace")).digest()
        matched = False
        for digest in self.digests:
            matched |= hmac.compare_digest(digest, presented)
        if not matched:
            raise InvalidApiKey("Incorrect API key provided.")
