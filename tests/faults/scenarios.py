"""Each fault once, under load: what the tests assert on and what bench/faults.py tabulates.

A scenario runs `Load` against a started `World`, injects its fault a
quarter of the way in, keeps the load for *seconds* in all, heals what it
broke, waits until the in-flight counts are back to 0 and returns a
`Report` (tests/faults/report.py) that judges the run.
"""

from tests.faults.process_faults import (
    backend_down,
    backend_failing,
    backend_garbage,
    backend_killed,
    backend_silent,
    collector_killed,
    master_killed,
    worker_killed,
)
from tests.faults.redis_faults import redis_debug_sleep, redis_flushall, redis_killed, redis_paused
from tests.faults.report import BASE_BOUND_S, Report, cut_off

__all__ = ["BASE_BOUND_S", "Report", "SHARED_WORLD", "cut_off"]

SHARED_WORLD = [
    redis_killed,
    redis_paused,
    redis_debug_sleep,
    redis_flushall,
    collector_killed,
    backend_failing,
    backend_garbage,
    backend_silent,
    backend_down,
    backend_killed,
    worker_killed,
    master_killed,
]
