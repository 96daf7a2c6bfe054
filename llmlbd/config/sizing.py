"""Worker sizing from the host: `server.workers` and `server.worker_connections` when unset.

A gevent worker is one Python thread: it uses at most one core, and a
proxied request costs it a fixed amount of CPU (bench/hotpath_profile.py:
about 250-400 µs of worker CPU per plain request on the 2-core benchmark
VM). So the default is one worker per core this process may run on. More
workers than cores buys no core to run on and costs CPU per request (+10-50%
per extra worker on 2 cores, docs/benchmarks.md "Worker count"); fewer
leaves cores idle under load.

worker_connections stays 1000 per worker, so the host's total (workers x
1000) grows with the core count: an idle keep-alive connection costs a
greenlet and a socket, no CPU, and the per-worker concurrency cap
(server.max_concurrent_requests, nine tenths of it by default) is what sheds
load first.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["CONNECTIONS_PER_WORKER", "usable_cores", "worker_connections", "workers"]

CONNECTIONS_PER_WORKER = 1000


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def workers(server: Any) -> int:
    """`server.workers`, or one per usable core when unset."""
    configured: int | None = server.workers
    return configured if configured else usable_cores()


def worker_connections(server: Any) -> int:
    """`server.worker_connections`, or CONNECTIONS_PER_WORKER when unset."""
    configured: int | None = server.worker_connections
    return configured if configured else CONNECTIONS_PER_WORKER
