"""Everything one worker process builds after fork: Redis client, policy, router, pools."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import structlog

from llmlbd.config.loader import Backend, Config
from llmlbd.metrics import Observer
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.fallback import LocalLeastRequest
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

__all__ = ["WorkerRuntime"]

log = structlog.get_logger("llmlbd.worker")


@dataclass
class WorkerRuntime:
    router: Router
    upstreams: Upstreams
    client: Any
    worker_id: str
    contexts: list[PolicyContext]
    seed: list[Backend]

    def refresh_membership(self) -> list[Backend] | None:
        """Adopt the pool's members from Redis (or the config's seed); the new list if it changed."""
        members = read_members(self.client, self.router.leases.keys.members)
        backends = list(members.values()) if members is not None else self.seed
        if backends == self.contexts[0].backends:
            return None
        for ctx in self.contexts:
            ctx.set_backends(backends)
        self.upstreams.sync(backends)
        return backends

    @classmethod
    def build(cls, config: Config, worker_id: str) -> WorkerRuntime:
        client = connect(config)
        keys = PoolKeys(config.server.pool)
        leases = Leases(
            client,
            keys,
            worker_id,
            int(config.server.lease_ttl_s * 1000),
            OutlierParams.from_server(config.server),
        )
        if direct_scripts.supports(client):
            # The lease scripts run on every request: skip redis-py's per-command layers.
            leases.scripts = direct_scripts.DirectScripts(client)  # type: ignore[assignment]
        rng = random.Random()
        ctx = PolicyContext(
            config.backends,
            config.lb_config,
            keys,
            leases,
            client,
            stale_after_ms=config.collector.stale_after_ms,
            rng=rng,
        )
        local_ctx = PolicyContext(config.backends, config.lb_config, keys, None, None, rng=rng)
        policy = load_policy_class(config.lb_policy)(ctx)
        breaker = Breaker(config.redis.breaker_failures, config.redis.breaker_reset_s)
        router = Router(policy, LocalLeastRequest(local_ctx), leases, breaker, observer=Observer())
        upstreams = Upstreams(
            config.backends,
            config.server.connect_timeout_s,
            config.server.read_timeout_s,
            config.server.upstream_pool_size,
        )
        return cls(router, upstreams, client, worker_id, [ctx, local_ctx], list(config.backends))
