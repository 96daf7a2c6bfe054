"""What routing knows about a request: parsed once, never re-serialised."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RoutingRequest"]


@dataclass
class RoutingRequest:
    request_id: str
    method: str
    path: str
    # The decoded JSON body when there is one (used to read the prompt), else None.
    body: dict[str, Any] | None = None
    model: str = ""
    stream: bool = False
    # "critical", "standard" or "sheddable"; "" when neither header nor body said.
    criticality: str = ""
    priority: int | None = None
    cache_salt: str = ""
    # The pool its model selected (llmlbd.policy.pools); "" until then, or when none did.
    pool: str = ""
    headers: dict[str, str] = field(default_factory=dict)
