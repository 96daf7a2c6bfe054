"""Up/down hysteresis for one backend (pure: results in, state out).

A backend is marked down after ``down_after`` consecutive failed checks and
up again after ``up_after`` consecutive good ones, so one lost packet does
not flap it. A backend never seen before ("unknown") goes up on its first
good check: waiting for ``up_after`` at collector start would hold back a
healthy fleet for no reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmlbd.state import backend_fields as F

__all__ = ["Health"]


@dataclass
class Health:
    down_after: int
    up_after: int
    state: str = F.HEALTH_UNKNOWN
    fails: int = 0
    successes: int = 0

    def observe(self, ok: bool) -> bool:
        """Record one check; True when the state changed."""
        before = self.state
        if ok:
            self.successes += 1
            self.fails = 0
            if self.state == F.HEALTH_UNKNOWN or (
                self.state == F.HEALTH_DOWN and self.successes >= self.up_after
            ):
                self.state = F.HEALTH_UP
        else:
            self.fails += 1
            self.successes = 0
            if self.state != F.HEALTH_DOWN and self.fails >= self.down_after:
                self.state = F.HEALTH_DOWN
        return self.state != before

    def restore(self, state: str | None, fails: str | None, successes: str | None) -> None:
        """Continue from what the previous owner of the backend wrote (after a failover)."""
        if state in (F.HEALTH_UP, F.HEALTH_DOWN, F.HEALTH_UNKNOWN):
            self.state = state
        self.fails = _count(fails)
        self.successes = _count(successes)

    def fields(self) -> dict[str, str]:
        return {F.HEALTH: self.state, F.FAILS: str(self.fails), F.SUCCESSES: str(self.successes)}


def _count(text: str | None) -> int:
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0
