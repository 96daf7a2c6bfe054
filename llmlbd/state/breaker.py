"""A circuit breaker so that no request waits on a Redis that is down.

Closed: calls go to Redis. After `failures` consecutive errors it opens and
every call goes straight to the local fallback for `reset_s`; then one call
probes (half-open) and its outcome closes or re-opens the breaker.
"""

from __future__ import annotations

import time

__all__ = ["Breaker"]


class Breaker:
    def __init__(self, failures: int = 3, reset_s: float = 2.0) -> None:
        self.max_failures = failures
        self.reset_s = reset_s
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self._probing else "open"

    def allow(self) -> bool:
        """May this call try Redis?"""
        if self.opened_at is None:
            return True
        if not self._probing and time.monotonic() - self.opened_at >= self.reset_s:
            self._probing = True  # exactly one caller probes
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._probing = False

    def failure(self) -> bool:
        """Record a failure; True when this failure opened (or re-opened) the breaker."""
        self.failures += 1
        if self._probing or (self.opened_at is None and self.failures >= self.max_failures):
            self.opened_at = time.monotonic()
            self._probing = False
            return True
        return False
