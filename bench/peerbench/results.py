"""What one request and one run measured, and the summary a table row shows (pure)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

from bench.peerbench.stats import percentile, ratio

__all__ = ["RequestRecord", "RunSummary", "summarize"]

SHED_STATUS = 429  # what llmlbd answers a shed request; a peer's 429 counts the same
UNFINISHED = -3  # still open when the run's grace period ended


@dataclass
class RequestRecord:
    status: int  # HTTP status; -1 connection error; -2 broken stream; -3 unfinished
    ttft: float = math.nan  # simulated seconds to the first content token (non-streaming: reply)
    latency: float = math.nan  # simulated seconds to the end of the answer
    itl: list[float] = field(default_factory=list)  # simulated gaps between content events
    output_tokens: int = 0
    critical: bool | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class RunSummary:
    router: str
    scenario: str
    rate: float  # simulated requests per second; 0 = closed loop
    offered: int = 0
    skipped: int = 0  # arrivals that found every user waiting
    completed: int = 0
    failed: int = 0
    shed: int = 0
    critical_shed: int = 0
    ttft_p50: float = math.nan
    ttft_p90: float = math.nan
    ttft_p99: float = math.nan
    itl_p50: float = math.nan
    itl_p99: float = math.nan
    critical_ttft_p90: float = math.nan
    output_tok_s: float = math.nan
    completed_per_s: float = math.nan
    hit_rate: float = math.nan  # hit tokens / queried tokens, from the servers' counters
    cpu_s_per_1000: float = math.nan
    rss_mb: float = math.nan
    spread: list[int] = field(default_factory=list)  # requests per server, as the servers count
    reasons: dict[str, int] = field(default_factory=dict)  # llmlbd's decision reasons
    router_ttfb_ms: list[float] = field(default_factory=list)  # llmlbd's own ttfb p50, p90
    cpu_split: dict[str, float] = field(default_factory=dict)  # CPU s per 1k requests by program
    failures: dict[str, int] = field(default_factory=dict)  # why the failed ones failed
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunSummary:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def summarize(
    router: str,
    scenario: str,
    rate: float,
    records: list[RequestRecord],
    offered: int,
    skipped: int,
    duration_s: float,
) -> RunSummary:
    """The run's figures from its requests; *duration_s* is simulated seconds of the run."""
    ok = [r for r in records if r.ok]
    shed = [r for r in records if r.status == SHED_STATUS]
    # Unfinished requests wait forever as far as the percentiles can tell.
    ttft = [r.ttft for r in records if r.ok or r.status == UNFINISHED]
    gaps = [gap for r in ok for gap in r.itl]
    critical_ok = [r.ttft for r in records if r.critical and r.status in (200, UNFINISHED)]
    return RunSummary(
        router=router,
        scenario=scenario,
        rate=rate,
        offered=offered,
        skipped=skipped,
        completed=len(ok),
        failed=len(records) - len(ok) - len(shed),
        shed=len(shed),
        critical_shed=sum(1 for r in shed if r.critical),
        ttft_p50=percentile(ttft, 0.5),
        ttft_p90=percentile(ttft, 0.9),
        ttft_p99=percentile(ttft, 0.99),
        itl_p50=percentile(gaps, 0.5),
        itl_p99=percentile(gaps, 0.99),
        critical_ttft_p90=percentile(critical_ok, 0.9),
        output_tok_s=ratio(sum(r.output_tokens for r in ok), duration_s),
        completed_per_s=ratio(len(ok), duration_s),
        failures=dict(
            Counter(_failure(r.status) for r in records if not r.ok and r.status != SHED_STATUS)
        ),
    )


def _failure(status: int) -> str:
    names = {-1: "connection error", -2: "stream cut", UNFINISHED: "unfinished"}
    return names.get(status, f"HTTP {status}")
