"""Filters: each drops the backends that cannot or should not take a request.

One module per filter, each with a ``TYPE`` name, a class with ``name``,
``from_params()`` and ``filter(request, candidates) -> FilterResult``, and a
docstring stating its formula. ``FILTERS`` lists them all by TYPE (the
contract test walks it).
"""

from __future__ import annotations

from llmlbd.policy.filters import (
    below_cap,
    critical_request,
    fresh_metrics,
    healthy,
    least_kv,
    least_queue,
    least_wait,
    lora_affinity,
    low_queue,
    serves_model,
    sheddable_capacity,
)

__all__ = ["FILTERS"]

FILTERS: dict[str, type] = {
    healthy.TYPE: healthy.Healthy,
    serves_model.TYPE: serves_model.ServesModel,
    below_cap.TYPE: below_cap.BelowCap,
    fresh_metrics.TYPE: fresh_metrics.FreshMetrics,
    critical_request.TYPE: critical_request.CriticalRequest,
    low_queue.TYPE: low_queue.LowQueue,
    lora_affinity.TYPE: lora_affinity.LoraAffinity,
    least_queue.TYPE: least_queue.LeastQueue,
    least_wait.TYPE: least_wait.LeastWait,
    least_kv.TYPE: least_kv.LeastKV,
    sheddable_capacity.TYPE: sheddable_capacity.SheddableCapacity,
}
