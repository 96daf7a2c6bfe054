"""Every policy llmlbd knows, by name; implementations are imported only when chosen."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["POLICIES", "ALIASES", "canonical_policy_name", "policy_names", "load_policy_class"]

POLICIES: dict[str, str] = {
    "global_least_request": "llmlbd.policy.profiles.least_request:GlobalLeastRequest",
    "prefix_cache": "llmlbd.policy.profiles.prefix_cache:PrefixCache",
    "least_busy": "llmlbd.policy.profiles.least_busy:LeastBusy",
    "round_robin": "llmlbd.policy.profiles.baselines:RoundRobin",
    "random": "llmlbd.policy.profiles.baselines:Random",
    "session_affinity": "llmlbd.policy.profiles.session_affinity:SessionAffinity",
}

# Higress renamed least_busy; both of its names keep working.
ALIASES: dict[str, str] = {
    "endpoint_metrics": "least_busy",
    "metrics_based": "least_busy",
}


def policy_names() -> list[str]:
    return [*POLICIES, *ALIASES]


def canonical_policy_name(name: Any) -> str:
    """Map a configured name (or alias) to its canonical name; KeyError if unknown."""
    if not isinstance(name, str):
        raise KeyError(name)
    name = ALIASES.get(name, name)
    if name not in POLICIES:
        raise KeyError(name)
    return name


def load_policy_class(name: str) -> type:
    module_name, attribute = POLICIES[canonical_policy_name(name)].split(":")
    return getattr(importlib.import_module(module_name), attribute)  # type: ignore[no-any-return]
