"""Percentile and ratio maths, summaries, result tables, target verdicts and wrk parsing."""

from __future__ import annotations

import math

import pytest

from bench.overhead import Cell, overhead_table, parse_wrk
from bench.peerbench.report import scenario_table, skipped_lines, verdicts
from bench.peerbench.results import RequestRecord, RunSummary, summarize
from bench.peerbench.stats import fmt, median, percentile, ratio, relative_gap


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.9) == 90
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile(values, 0.0) == 1
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0  # unsorted input
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)


def test_median_ratio_and_gap():
    assert median([5.0, 1.0, 3.0]) == 3.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert math.isnan(median([]))
    assert ratio(3.0, 4.0) == 0.75
    assert math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(math.nan, 1.0))
    assert relative_gap(1.05, 1.0) == pytest.approx(0.05)
    assert relative_gap(0.9, 1.0) == pytest.approx(-0.1)
    assert fmt(math.nan) == "-" and fmt(1.234, 1, " s") == "1.2 s"


def test_summarize_counts_outcomes_and_percentiles():
    records = [RequestRecord(200, ttft=t, itl=[0.01, 0.02], output_tokens=10) for t in (1, 2, 3, 4)]
    records += [
        RequestRecord(429, critical=False),
        RequestRecord(429, critical=True),
        RequestRecord(503),
        RequestRecord(-1),
    ]
    records[0].critical = True
    summary = summarize("r", "s", 2.0, records, offered=10, skipped=2, duration_s=8.0)
    assert (summary.completed, summary.shed, summary.failed) == (4, 2, 2)
    assert summary.critical_shed == 1
    assert summary.ttft_p50 == 2 and summary.ttft_p90 == 4
    assert summary.critical_ttft_p90 == 1
    assert summary.itl_p50 == 0.01 and summary.itl_p99 == 0.02
    assert summary.output_tok_s == 5.0 and summary.completed_per_s == 0.5
    assert RunSummary.from_dict(summary.to_dict()) == summary


def _row(router: str, rate: float, p90: float, done_per_s: float, hit: float) -> RunSummary:
    return RunSummary(
        router,
        "kv-pressure",
        rate,
        completed=10,
        ttft_p90=p90,
        completed_per_s=done_per_s,
        hit_rate=hit,
        spread=[5, 5],
    )


def test_table_has_one_row_per_run_closed_loop_last():
    rows = [_row("oracle", 0.0, 1.0, 1.0, 0.9), _row("llmlbd prefix_cache", 2.0, 0.5, 1.0, 0.8)]
    table = scenario_table(rows).splitlines()
    assert len(table) == 4
    assert table[2].startswith("| 2 | llmlbd prefix_cache |") and "80.0 %" in table[2]
    assert table[3].startswith("| closed | oracle |")
    assert all(line.count("|") == table[0].count("|") for line in table)
    tiers = scenario_table(rows, tiers=True).splitlines()
    assert "critical shed" in tiers[0] and tiers[1].count("---") == tiers[0].count("|") - 1


def test_kv_verdict_checks_best_p90_throughput_and_oracle_gap():
    rows = [
        _row("llmlbd prefix_cache", 2.0, 0.5, 2.0, 0.80),
        _row("nginx least_conn", 2.0, 0.9, 1.5, 0.20),
        _row("oracle", 2.0, 0.6, 2.0, 0.82),
        _row("llmlbd prefix_cache", 5.0, 1.5, 3.0, 0.70),
        _row("sglang-router cache_aware", 5.0, 1.0, 3.5, 0.80),
        _row("oracle", 5.0, 1.2, 3.5, 0.80),
    ]
    lines = verdicts("kv-pressure", rows)
    at2 = [line for line in lines if line.startswith("rate 2:")]
    at5 = [line for line in lines if line.startswith("rate 5:")]
    assert "MISSED" not in " ".join(at2)
    assert at5[0].count("MISSED") == 2  # slower p90 and lower throughput than sglang-router
    assert "12.5 % below" in at5[1] and "MISSED" in at5[1]


def test_peer_gap_and_tiers_verdicts():
    rows = [
        RunSummary("llmlbd global_least_request", "single-shot", 4.0, ttft_p90=1.04),
        RunSummary("vllm-router round_robin", "single-shot", 4.0, ttft_p90=1.0),
        RunSummary("nginx least_conn", "single-shot", 4.0, ttft_p90=1.2),
    ]
    (line,) = verdicts("single-shot", rows)
    assert "vllm-router round_robin" in line and "4 %" in line and line.endswith("met")
    tiers = [
        RunSummary(
            "llmlbd least_busy", "tiers", 8.0, shed=5, critical_shed=0, critical_ttft_p90=0.4
        ),
        RunSummary("litellm least-busy", "tiers", 8.0, critical_ttft_p90=0.3),
    ]
    shed, fastest = verdicts("tiers", tiers)
    assert shed.endswith("met") and "MISSED" in fastest


def test_skipped_routers_are_listed_with_their_reason():
    assert skipped_lines({"litellm least-busy": "pip failed"}) == [
        "- **litellm least-busy** skipped: pip failed"
    ]


WRK = """Running 5s test @ http://127.0.0.1:1/v1/chat/completions
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  300.00us   9.00ms   90.00%
  Latency Distribution
     50%  850.00us
     75%    1.20ms
     90%    1.50ms
     99%    2.50ms
  150000 requests in 5.00s, 60.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  30000.50
Transfer/sec:     12.00MB
"""


def test_parse_wrk_reads_rate_latency_and_errors():
    parsed = parse_wrk(WRK)
    assert parsed["rate"] == 30000.5
    assert parsed["p50_ms"] == pytest.approx(0.85) and parsed["p99_ms"] == 2.5
    assert parsed["errors"] == 7
    assert parse_wrk("garbage")["rate"] == 0.0


def test_overhead_table_gives_ratios_to_direct_and_to_vllm_router():
    cells = {
        ("direct", "plain"): Cell([10000, 12000, 11000], [1, 1, 1], [2, 2, 2]),
        ("vllm-router round_robin", "plain"): Cell([5000, 5500, 4000], [1, 1, 1], [2, 2, 2]),
        ("llmlbd global_least_request", "plain"): Cell([1100, 900, 1000], [3, 3, 3], [9, 9, 9]),
    }
    lines = overhead_table(cells).splitlines()
    llmlbd = next(line for line in lines if "llmlbd" in line)
    assert "| 1,000 |" in llmlbd  # the median of the rounds
    assert "| 0.09 | 0.20 |" in llmlbd  # 1000 / 11000 and 1000 / 5000
    direct = next(line for line in lines if "| direct |" in line)
    assert "| 1.00 | 2.20 |" in direct


def test_unfinished_requests_fail_and_push_the_p90_to_infinity():
    records = [RequestRecord(200, ttft=0.1) for _ in range(8)]
    records += [RequestRecord(-3, ttft=math.inf), RequestRecord(-3, ttft=math.inf)]
    summary = summarize("r", "s", 1.0, records, offered=10, skipped=0, duration_s=10.0)
    assert summary.failed == 2 and summary.completed == 8
    assert summary.ttft_p50 == 0.1 and summary.ttft_p90 == math.inf


def test_llmlbd_decision_reasons_are_counted_from_its_request_log(tmp_path):
    from bench.peerbench.report import reason_lines
    from bench.peerbench.runner import request_log

    log = tmp_path / "llmlbd.log"
    log.write_text(
        '{"event": "worker_ready", "pid": 1}\n'
        '{"reason": "hit", "event": "request_done", "ttfb_ms": 10.0}\n'
        '{"reason": "miss", "event": "request_done", "ttfb_ms": 30.0}\n'
        '{"reason": "hit", "event": "request_done", "ttfb_ms": 20.0}\n'
        "not json but mentions request_done\n"
    )
    reasons, ttfb = request_log(log)
    assert reasons == {"hit": 2, "miss": 1} and list(reasons) == ["hit", "miss"]
    assert ttfb == [10.0, 30.0, 20.0]
    row = RunSummary(
        "llmlbd prefix_cache", "kv-pressure", 2.0, reasons=reasons, router_ttfb_ms=[20.0, 30.0]
    )
    assert reason_lines([row, RunSummary("oracle", "kv-pressure", 2.0)]) == [
        "- llmlbd prefix_cache at 2: hit 2, miss 1; ttfb_ms (arrival to the backend's first "
        "body byte, prefill included) p50 20 / p90 30 ms (wall)"
    ]


def test_failures_are_broken_down_by_cause():
    from bench.peerbench.report import failure_lines

    records = [RequestRecord(200, ttft=0.1), RequestRecord(429), RequestRecord(-3, ttft=math.inf)]
    records += [RequestRecord(503), RequestRecord(503), RequestRecord(-1)]
    summary = summarize("nginx least_conn", "s", 4.0, records, 6, 0, 1.0)
    assert summary.failures == {"unfinished": 1, "HTTP 503": 2, "connection error": 1}
    assert failure_lines([summary]) == [
        "- nginx least_conn at 4: 2 HTTP 503, 1 connection error, 1 unfinished"
    ]
