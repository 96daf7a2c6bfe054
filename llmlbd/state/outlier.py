"""Outlier ejection: a backend that fails request after request leaves the pool for a while.

The worker that ends a request passes its outcome to the release script
(lua/release.lua): "ok", a failure kind (`FAILURES`) or "" (not the backend's
doing: a client that went away, a worker stopping). Consecutive failures on a
backend eject it for a cool-down that doubles with every ejection in a row;
the ejection is an entry in the pool's `ejected` ZSET, which ``ineligible()``
(lua/_lib.lua) and the `healthy` filter read, so every worker of every replica
stops sending to it at its next decision. When the cool-down ends the backend
is half-open: the next request reserved on it is its probe, and only the
probe's outcome counts (success: back in the pool; failure: ejected again,
for twice as long). Redis's clock (TIME) times it all. See
docs/reliability.md, "Outlier ejection".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmlbd.config.sections import ServerSection
from llmlbd.state.keys import PoolKeys
from llmlbd.state.scripts import reply_text

__all__ = [
    "OK",
    "FAILURES",
    "OutlierParams",
    "DEFAULT_OUTLIER",
    "Released",
    "OutlierRecord",
    "outlier_view",
    "backend_outcome",
]

OK = "ok"
# connect: no connection; reset: the connection broke; status: a 5xx from the backend;
# timeout: no answer within server.read_timeout_s.
FAILURES = ("connect", "reset", "status", "timeout")


def backend_outcome(status: int, ended: str) -> str:
    """What a relayed response says about its backend: "status" for a 5xx, "reset" when
    the body broke off, "ok" for a whole response, "" (nothing) when the client left or
    the headers could not be relayed. *ended* is the relay's outcome."""
    if status >= 500:
        return "status"
    if ended == "upstream_error":
        return "reset"
    return OK if ended == "complete" else ""


@dataclass(frozen=True)
class OutlierParams:
    """The release script's ejection settings (server.eject_*); failures 0 turns it off."""

    failures: int = 5
    base_ms: int = 5_000
    max_ms: int = 300_000
    probe_ms: int = 30_000

    def args(self) -> list[int]:
        return [self.failures, self.base_ms, self.max_ms, self.probe_ms]

    @classmethod
    def from_server(cls, server: ServerSection) -> OutlierParams:
        """The `server.eject_*` settings."""
        return cls(
            server.eject_after_failures,
            int(server.eject_cooldown_s * 1000),
            int(max(server.eject_max_cooldown_s, server.eject_cooldown_s) * 1000),
            int(server.eject_probe_s * 1000),
        )


DEFAULT_OUTLIER = OutlierParams()


@dataclass(frozen=True)
class Released:
    """What a release did: whether a lease was given back, and any ejection it caused."""

    released: bool
    event: str = ""  # "ejected", "returned" or ""
    backend: str = ""
    cooldown_ms: int = 0
    level: int = 0  # ejections in a row
    kind: str = ""  # the failure that counted
    streak: int = 0  # consecutive failures (the one that ejected included)

    def __bool__(self) -> bool:
        return self.released

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> Released:
        if len(reply) < 7:
            return cls(bool(int(reply[0])), reply_text(reply[1]) if len(reply) > 1 else "")
        return cls(
            bool(int(reply[0])),
            reply_text(reply[1]),
            reply_text(reply[2]),
            int(reply[3]),
            int(reply[4]),
            reply_text(reply[5]),
            int(reply[6]),
        )


@dataclass(frozen=True)
class OutlierRecord:
    """One backend's entry in the `outlier` HASH: "streak level kind window_ms probe"."""

    streak: int
    level: int
    kind: str
    window_ms: int
    probe: str | None

    @classmethod
    def parse(cls, value: str) -> OutlierRecord:
        parts = value.split(" ", 4) + ["", "", "", "", ""]
        return cls(
            int(parts[0] or 0),
            int(parts[1] or 0),
            parts[2] or "-",
            int(parts[3] or 0),
            None if parts[4] in ("", "-") else parts[4],
        )


def outlier_view(client: Any, keys: PoolKeys) -> tuple[dict[str, int], dict[str, OutlierRecord]]:
    """Every ejection (backend -> until ms, half-open ones included) and every outlier
    record, in one round trip (for llmlbctl)."""
    pipe = client.pipeline(transaction=False)
    pipe.zrange(keys.ejected, 0, -1, withscores=True)
    pipe.hgetall(keys.outlier)
    ejected, records = pipe.execute()
    return (
        {reply_text(name): int(until) for name, until in ejected},
        {reply_text(k): OutlierRecord.parse(reply_text(v)) for k, v in records.items()},
    )
