"""What a fault scenario found: one `Report` per fault, and the rules that judge it.

``report.problems()`` lists every broken promise: a request that was not on
the failed part and did not complete, a failed-part request without the
documented error, a request slower than the bound, a leaked count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.faults.load import Load, Outcome
from tests.faults.world import World
from tests.harness import wait_until

# A request's own time on a loaded 2-core machine, before any fault adds to it.
BASE_BOUND_S = 5.0


@dataclass
class Report:
    fault: str
    clients: int
    results: list[Outcome]
    expected: str  # the documented outcome of a request on the failed part
    on_failed_part: Callable[[Outcome], bool] = lambda outcome: False
    documented: Callable[[Outcome], bool] = lambda outcome: False
    bound_s: float = BASE_BOUND_S
    recover_s: float = 0.0
    leaked: dict[str, int] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)  # other broken promises (e.g. /readyz)

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.results if not outcome.ok]

    @property
    def failed_part(self) -> list[Outcome]:
        return [outcome for outcome in self.failed if self.on_failed_part(outcome)]

    @property
    def failed_elsewhere(self) -> list[Outcome]:
        return [outcome for outcome in self.failed if not self.on_failed_part(outcome)]

    def problems(self) -> list[str]:
        found = [f"not on the failed part, failed: {o.describe()}" for o in self.failed_elsewhere]
        found += [
            f"on the failed part without the documented error ({self.expected}): {o.describe()}"
            for o in self.failed_part
            if not self.documented(o)
        ]
        found += [
            f"slower than {self.bound_s:.1f} s: {o.describe()}"
            for o in self.results
            if o.duration > self.bound_s
        ]
        if self.leaked:
            found.append(f"in-flight counts leaked: {self.leaked}")
        found += self.broken
        if not self.results:
            found.append("no request was sent")
        return found

    def row(self) -> dict[str, object]:
        return {
            "fault": self.fault,
            "load": f"{self.clients} clients, half streaming",
            "sent": len(self.results),
            "completed": len(self.results) - len(self.failed),
            "failed on the failed part": len(self.failed_part),
            "failed elsewhere": len(self.failed_elsewhere),
            "slowest request (s)": round(max((o.duration for o in self.results), default=0), 2),
            "time to recover (s)": round(self.recover_s, 2),
        }


def in_flight_at(moment: float) -> Callable[[Outcome], bool]:
    """A request that had started and not yet ended at *moment*."""
    return lambda o: o.started <= moment <= o.started + o.duration


def broken_stream(code: str) -> Callable[[Outcome], bool]:
    """A 200 stream that llmlbd ended with its SSE error event of *code*, never [DONE]."""
    return lambda o: o.stream and o.status == 200 and o.sse_error and o.error_code == code


def cut_off(o: Outcome) -> bool:
    """The connection to llmlbd itself died: a reset, or a body cut short without [DONE]."""
    return o.exception is not None or (o.status == 200 and not o.done)


def finish(world: World, load: Load, report: Report) -> Report:
    report.results = load.stop()
    try:
        world.wait_no_inflight()
    except AssertionError:
        report.leaked = world.inflight()
    return report


def redis_down_recovery(world: World, since: float) -> float:
    """Seconds from *since* until /readyz is 200 three times in a row (both workers probed)."""
    streak = 0

    def ready() -> bool:
        nonlocal streak
        streak = streak + 1 if world.readyz() == 200 else 0
        return streak >= 3

    wait_until(ready, timeout=30, interval=0.1, message="/readyz 200 again")
    return time.monotonic() - since


def readyz_saw_degraded(world: World, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if world.readyz() == 503:
            return True
        time.sleep(0.05)
    return False


def warm(load: Load, seconds: float) -> None:
    """Let the load flow for a quarter of the run before the fault hits."""
    load.wait_for(load.clients)
    time.sleep(seconds / 4)


def pad(load: Load, seconds: float) -> None:
    """Keep the load running until *seconds* after it started, and at least a few requests more."""
    started = min((o.started for o in load.results), default=time.monotonic())
    remaining = started + seconds - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    load.wait_for(load.clients)
