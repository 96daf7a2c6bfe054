"""The policy names the config accepts are exactly the policies llmlbd implements."""

from __future__ import annotations

from llmlbd.config.names import ALIASES, POLICY_NAMES
from llmlbd.policy.registry import POLICIES


def test_every_configurable_policy_has_an_implementation_and_back() -> None:
    """A name the loader accepts must load a class, and every class must be reachable by name."""
    assert set(POLICY_NAMES) == set(POLICIES)


def test_aliases_point_at_real_policies() -> None:
    assert set(ALIASES.values()) <= set(POLICY_NAMES)
    assert not set(ALIASES) & set(POLICY_NAMES)
