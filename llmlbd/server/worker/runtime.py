"""Everything one worker process builds after fork: Redis client, policies, routers, pools.

One `Router` per configured pool (its own policy, `lb_config`, keys, fallback and
membership), all behind `PoolRouters`, which picks the pool from the request's model;
the single-pool file is one pool that takes every model. One Redis client, one circuit
breaker and one set of connection pools (`Upstreams`, keyed by backend name, which the
loader keeps unique across pools) serve every pool.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import structlog

from llmlbd.config.loader import Backend, Config, PoolSpec
from llmlbd.metrics import Observer
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.fallback import LocalLeastRequest
from llmlbd.policy.pools import PoolRouters
from llmlbd.policy.registry import load_policy_class
from llmlbd.policy.router import Router
from llmlbd.server.worker.forward import Upstreams
from llmlbd.state import direct_scripts
from llmlbd.state.breaker import Breaker
from llmlbd.state.client import connect
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases
from llmlbd.state.members import read_members
from llmlbd.state.outlier import OutlierParams

__all__ = ["WorkerRuntime", "PoolRuntime"]

log = structlog.get_logger("llmlbd.worker")


@dataclass
class PoolRuntime:
    """One pool in one worker: its router and the contexts whose membership follows Redis."""

    name: str
    router: Router
    contexts: list[PolicyContext]
    seed: list[Backend]

    @property
    def backends(self) -> list[Backend]:
        return self.contexts[0].backends

    def refresh_membership(self, client: Any) -> bool:
        """Adopt the pool's members from Redis (or the config's seed); True if they changed."""
        members = read_members(client, self.router.leases.keys.members)
        backends = list(members.values()) if members is not None else self.seed
        if backends == self.contexts[0].backends:
            return False
        for ctx in self.contexts:
            ctx.set_backends(backends)
        return True


@dataclass
class WorkerRuntime:
    router: PoolRouters
    upstreams: Upstreams
    client: Any
    worker_id: str
    pools: dict[str, PoolRuntime]

    def backends(self) -> list[Backend]:
        """Every pool's current backends, each name once (a shared backend is one server)."""
        seen: dict[str, Backend] = {}
        for pool in self.pools.values():
            for backend in pool.backends:
                seen.setdefault(backend.name, backend)
        return list(seen.values())

    def refresh_membership(self) -> list[Backend] | None:
        """Adopt every pool's members from Redis; all backends if any pool changed."""
        changed = [pool.refresh_membership(self.client) for pool in self.pools.values()]
        if not any(changed):
            return None
        backends = self.backends()
        self.upstreams.sync(backends)
        return backends

    @classmethod
    def build(cls, config: Config, worker_id: str) -> WorkerRuntime:
        client = connect(config)
        scripts = (
            direct_scripts.DirectScripts(client, config.redis.local_unix_socket)
            if direct_scripts.supports(client)
            else None
        )
        breaker = Breaker(config.redis.breaker_failures, config.redis.breaker_reset_s)
        observer = Observer()
        pools = {
            spec.name: _pool_runtime(config, spec, client, worker_id, breaker, observer, scripts)
            for spec in config.pools
        }
        router = PoolRouters(
            {name: pool.router for name, pool in pools.items()}, config.pool_map(), breaker
        )
        upstreams = Upstreams(
            config.all_backends(),
            config.server.connect_timeout_s,
            config.server.read_timeout_s,
            config.server.upstream_pool_size,
        )
        return cls(router, upstreams, client, worker_id, pools)


def _pool_runtime(
    config: Config,
    spec: PoolSpec,
    client: Any,
    worker_id: str,
    breaker: Breaker,
    observer: Observer,
    scripts: Any,
) -> PoolRuntime:
    keys = PoolKeys(spec.name)
    leases = Leases(
        client,
        keys,
        worker_id,
        int(config.server.lease_ttl_s * 1000),
        OutlierParams.from_server(config.server),
    )
    if scripts is not None:
        # The lease scripts run on every request: skip redis-py's per-command layers.
        leases.scripts = scripts
    rng = random.Random()
    ctx = PolicyContext(
        spec.backends,
        spec.lb_config,
        keys,
        leases,
        client,
        stale_after_ms=config.collector.stale_after_ms,
        rng=rng,
    )
    local_ctx = PolicyContext(spec.backends, spec.lb_config, keys, None, None, rng=rng)
    policy = load_policy_class(spec.lb_policy)(ctx)
    router = Router(policy, LocalLeastRequest(local_ctx), leases, breaker, observer=observer)
    return PoolRuntime(spec.name, router, [ctx, local_ctx], list(spec.backends))
