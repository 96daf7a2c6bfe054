"""Names the config accepts and that other layers key on: policies and Redis-safe names.

They live at the bottom layer so that the loader can validate a file without
importing the policies or the state layer; `llmlbd.policy.registry` maps each
policy name here to its implementation, and `llmlbd.state.keys` builds keys
only from names that passed `validate_name`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "POLICY_NAMES",
    "ALIASES",
    "canonical_policy_name",
    "policy_names",
    "validate_name",
    "redact_url",
]

# Every policy llmlbd implements (llmlbd/policy/registry.py maps each to its class).
POLICY_NAMES: tuple[str, ...] = (
    "global_least_request",
    "prefix_cache",
    "least_busy",
    "round_robin",
    "random",
    "session_affinity",
)

# Higress renamed least_busy; both of its names keep working.
ALIASES: dict[str, str] = {
    "endpoint_metrics": "least_busy",
    "metrics_based": "least_busy",
}

_NAME = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


def policy_names() -> list[str]:
    return [*POLICY_NAMES, *ALIASES]


def canonical_policy_name(name: Any) -> str:
    """Map a configured name (or alias) to its canonical name; KeyError if unknown."""
    if not isinstance(name, str):
        raise KeyError(name)
    canonical: str = ALIASES.get(name, name)
    if canonical not in POLICY_NAMES:
        raise KeyError(name)
    return canonical


def validate_name(kind: str, value: str) -> str:
    """Return *value* if it is safe inside a Redis key (no braces, no spaces), else raise ValueError."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{kind} {value!r} must be 1-128 characters of letters, digits and . _ : @ -"
        )
    return value


def redact_url(url: str | None) -> str | None:
    """The URL with its password replaced by ***, for output and error messages."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))
