"""Every policy llmlbd implements, by name; implementations are imported only when chosen.

The names themselves (and Higress's aliases) are declared in `llmlbd.config.names`,
so that the config loader validates `lb_policy` without importing any policy.
"""

from __future__ import annotations

import importlib

from llmlbd.config.names import ALIASES, canonical_policy_name, policy_names

__all__ = ["POLICIES", "ALIASES", "canonical_policy_name", "policy_names", "load_policy_class"]

POLICIES: dict[str, str] = {
    "global_least_request": "llmlbd.policy.profiles.least_request:GlobalLeastRequest",
    "prefix_cache": "llmlbd.policy.profiles.prefix_cache:PrefixCache",
    "least_busy": "llmlbd.policy.profiles.least_busy:LeastBusy",
    "round_robin": "llmlbd.policy.profiles.baselines:RoundRobin",
    "random": "llmlbd.policy.profiles.baselines:Random",
    "session_affinity": "llmlbd.policy.profiles.session_affinity:SessionAffinity",
}


def load_policy_class(name: str) -> type:
    module_name, attribute = POLICIES[canonical_policy_name(name)].split(":")
    cls: type = getattr(importlib.import_module(module_name), attribute)
    return cls
