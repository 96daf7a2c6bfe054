"""The types every layer above state/ shares: a backend, its snapshot, a lease.

`Backend` is what the config describes (name, URL, weight). It is defined by
the config loader, the bottom layer, because the loader builds it and the
config layer may import nothing of ours; state/ re-exports it here so that
policy/, ctl/ and the collector take every shared type from one place.
`BackendState` is a backend plus the shared state read from Redis, and
`LeaseRecord` parses the value the lease scripts write (lua/_lib.lua
``reserve``): the format is written by state/ and read only through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmlbd.config.loader import Backend

__all__ = ["Backend", "BackendState", "LeaseRecord", "ClaimRecord", "parse_ms"]


@dataclass
class BackendState:
    """One backend as a policy sees it: static config plus a snapshot of shared state."""

    backend: Backend
    inflight: int = 0
    drained: bool = False
    # The collector's hash for this backend (field names in state.backend_fields).
    metrics: dict[str, str] = field(default_factory=dict)
    # Milliseconds since the metrics were scraped; None when never scraped.
    metrics_age_ms: int | None = None
    # Outlier ejection: until when (ms, Redis clock) it takes no request; None when it may.
    ejected_until_ms: int | None = None

    @property
    def name(self) -> str:
        return self.backend.name

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        if value in (None, ""):
            return None
        try:
            return float(value)
        except ValueError:
            return None

    def names(self, field_name: str) -> list[str]:
        value = self.metrics.get(field_name) or ""
        return [part for part in value.split(",") if part]


def parse_ms(value: str | None) -> int | None:
    """A stored millisecond timestamp, or None when absent or malformed."""
    try:
        return int(float(value)) if value else None
    except ValueError:
        return None


@dataclass(frozen=True)
class LeaseRecord:
    """A lease value "backend worker since_ms" (since_ms is absent in old leases)."""

    backend: str
    worker: str
    since_ms: int | None

    @classmethod
    def parse(cls, value: str) -> LeaseRecord:
        parts = value.split(" ")
        return cls(
            parts[0] if parts else "",
            parts[1] if len(parts) > 1 else "",
            parse_ms(parts[2]) if len(parts) > 2 else None,
        )


@dataclass(frozen=True)
class ClaimRecord:
    """A scrape-ownership value "collector_id deadline_ms" (collector_claim.lua)."""

    collector: str
    deadline_ms: int | None

    @classmethod
    def parse(cls, value: str) -> ClaimRecord:
        collector, _, deadline = value.partition(" ")
        return cls(collector, parse_ms(deadline))
