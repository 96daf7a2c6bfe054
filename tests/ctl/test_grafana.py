"""docs/grafana-dashboard.json is valid and uses only metrics llmlbd/metrics.py declares."""

from __future__ import annotations

import json
import re

from prometheus_client.metrics import MetricWrapperBase

from llmlbd import metrics
from tests.harness import ROOT

SUFFIXES = {
    "counter": ["_total"],
    "histogram": ["_bucket", "_sum", "_count"],
    "gauge": [""],
    "summary": ["", "_sum", "_count"],
}


def exposed_names() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for metric in value.describe():
                names |= {metric.name + suffix for suffix in SUFFIXES.get(metric.type, [""])}
    return names | set(metrics.POOL_GAUGES)


def test_dashboard_uses_only_declared_metrics():
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    used = {name for expr in exprs for name in re.findall(r"\bllmlbd_[a-z0-9_]+", expr)}
    unknown = used - exposed_names()
    assert not unknown, f"not in llmlbd/metrics.py: {sorted(unknown)}"
    # The panels the runbook points at are there.
    titles = " ".join(panel["title"] for panel in dashboard["panels"])
    for word in (
        "by backend",
        "by status",
        "Decision",
        "first byte",
        "Retries",
        "fallback",
        "Redis errors",
        "in flight",
    ):
        assert word in titles, word


def test_panel_ids_are_unique():
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
