"""Collector ownership of backends: who scrapes what, with leases in Redis.

Several collectors (one per VM) share a pool. Each calls `claim` a few
times per lease period; the script (``lua/collector_claim.lua``) renews its
backends, takes orphaned ones up to a fair share, and returns the set it
owns. A collector that dies stops renewing, and the others take its
backends as soon as its lease runs out. `publish` writes a backend's fields
only while the caller still owns it (fencing), so two collectors never
interleave writes to one hash. All deadlines use the Redis server's clock.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmlbd.state.client import execute_script_pipeline, script_pipeline
from llmlbd.state.keys import PoolKeys
from llmlbd.state.scripts import ScriptSet, reply_text

__all__ = ["CollectorLeases", "FieldWrite", "new_collector_id"]


@dataclass(frozen=True)
class FieldWrite:
    """Fields of one backend's hash to write (and delete), with the age of what they say."""

    backend: str
    fields: Mapping[str, str]
    delete: Sequence[str] = ()
    scraped_age_ms: float | None = None
    models_age_ms: float | None = None


def new_collector_id() -> str:
    """Unique across hosts and restarts: host:pid:random (no spaces: it is stored space-separated)."""
    host = socket.gethostname().replace(" ", "_") or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(3)}"


class CollectorLeases:
    """The collector scripts of one pool, bound to one client and one collector id."""

    def __init__(self, client: Any, keys: PoolKeys, collector_id: str, lease_ms: int) -> None:
        if not collector_id or any(c.isspace() for c in collector_id):
            raise ValueError(f"collector id {collector_id!r} must be non-empty with no spaces")
        self.client = client
        self.keys = keys
        self.collector_id = collector_id
        self.lease_ms = int(lease_ms)
        self.scripts = ScriptSet(client)

    def claim(self, backends: Sequence[str]) -> set[str]:
        """Heartbeat, renew and take this collector's share; returns the names it owns."""
        k = self.keys
        reply = self.scripts.collector_claim(
            keys=[k.collectors, k.scrape_owners], args=[self.collector_id, self.lease_ms, *backends]
        )
        return {reply_text(name) for name in reply}

    def publish(
        self,
        backend: str,
        fields: Mapping[str, str],
        delete: Sequence[str] = (),
        scraped_age_ms: float | None = None,
        models_age_ms: float | None = None,
    ) -> bool:
        """Write *fields* and delete *delete* in the backend's hash if still its owner.

        Ages are measured by the caller (monotonic clock) and turned into
        ``scraped_at``/``models_at`` on the Redis clock by the script.
        """
        write = FieldWrite(backend, fields, delete, scraped_age_ms, models_age_ms)
        return bool(self._publish(write, self.client))

    def publish_many(self, writes: Sequence[FieldWrite]) -> list[bool | Exception]:
        """`publish` each write, all in one pipelined round trip.

        One result per write: True (written), False (not the owner: another
        collector took the backend), or the Exception a script raised. A
        network error raises, since then nothing is known to be written.
        """
        pipe = script_pipeline(self.client, self.keys.scrape_owners)
        for write in writes:
            self._publish(write, pipe)
        return [
            r if isinstance(r, Exception) else bool(int(r))
            for r in execute_script_pipeline(self.client, pipe)
        ]

    def _publish(self, write: FieldWrite, client: Any) -> Any:
        k, backend, fields, delete = self.keys, write.backend, write.fields, write.delete
        scraped_age_ms, models_age_ms = write.scraped_age_ms, write.models_age_ms
        pairs: list[str] = []
        for name, value in fields.items():
            pairs += (name, value)
        args = [
            self.collector_id,
            backend,
            "" if scraped_age_ms is None else max(0, int(scraped_age_ms)),
            "" if models_age_ms is None else max(0, int(models_age_ms)),
            len(fields),
            *pairs,
            *delete,
        ]
        return self.scripts.collector_publish(
            keys=[k.scrape_owners, k.backend(backend)], args=args, client=client
        )

    def leave(self, backends: Sequence[str]) -> int:
        """Stopping: release every backend this collector owns and drop its heartbeat."""
        return self._release(backends, stopping=True)

    def release(self, backends: Sequence[str]) -> int:
        """Release *backends* (they left the pool) if this collector owns them."""
        return self._release(backends, stopping=False)

    def _release(self, backends: Sequence[str], stopping: bool) -> int:
        k = self.keys
        return int(
            self.scripts.collector_leave(
                keys=[k.collectors, k.scrape_owners],
                args=[self.collector_id, "1" if stopping else "0", *backends],
            )
        )

    def owners(self) -> dict[str, str]:
        """backend -> owning collector id (as recorded; expired entries included)."""
        raw = self.client.hgetall(self.keys.scrape_owners)
        return {reply_text(b): reply_text(v).split(" ", 1)[0] for b, v in raw.items()}
