"""Several pools in one config, and the rule that sends a request's `model` to one of them.

A pool is a fleet of interchangeable backends with its own policy, `lb_config` and
Redis hash tag (`llmlb:{POOL}:...`, see llmlbd/state/keys.py), so pools spread over
Redis Cluster shards. The single-pool file (top-level `backends`, `lb_policy`,
`lb_config`, `server.pool`: Higress's shape) is one pool that takes every model.

The rule (`PoolMap.select`), first match wins:

1. an exact model name listed under one pool's `models`;
2. a glob pattern (`*`, `?`, `[...]`, case-sensitive) under `models`, pools in file
   order, patterns in list order;
3. the pool with `default: true`.

No match: the caller answers 404 model_not_found. A request without a model (e.g. a
GET, a multipart upload) goes to the default pool, or the first pool if none is.
This module is pure: no Redis, no policy, so the loader validates with it and every
process (proxy worker, collector, llmlbctl) selects with the same code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import translate
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmlbd.config.loader import Backend
    from llmlbd.config.sections import LbConfigSection

__all__ = ["PoolSpec", "PoolMap", "is_pattern", "POOL_KEYS", "POOL_KEY_DOCS", "POOL_ONLY_AT_TOP"]

# Keys of one entry of `pools:` -> (default, accepts, doc); docs/reference/config.md
# is generated from this table (scripts/gen_config_docs.py).
POOL_KEY_DOCS: dict[str, tuple[str, str, str]] = {
    "name": (
        "required",
        "1-128 letters, digits and `. _ : @ -`",
        "The pool's name: its Redis hash tag (`llmlb:{NAME}:...`) and `llmlbctl --pool NAME`. "
        "Unique.",
    ),
    "models": (
        "`[]`",
        "list of model names and glob patterns (`*`, `?`, `[...]`)",
        "The request models routed here. An exact name wins over any pattern; patterns are "
        "tried in file order; an entry may appear in one pool only.",
    ),
    "default": (
        "`false`",
        "true / false",
        "Takes every model no pool lists. At most one pool; without one, such a model gets "
        "404 `model_not_found`. A request without a model goes to the default pool, else "
        "to the first.",
    ),
    "lb_policy": (
        "the top-level `lb_policy`",
        "a policy name, as at the top level",
        "This pool's policy.",
    ),
    "lb_config": (
        "the top-level `lb_config`",
        "mapping of `lb_config` keys",
        "This pool's policy options, over the top-level `lb_config` keys that apply to its "
        "policy. The Redis keys (`serviceFQDN`, `servicePort`, `username`, `password`, "
        "`timeout`, `database`) stay at the top level.",
    ),
    "backends": (
        "`[]`",
        "as the top-level `backends`",
        "This pool's backends (the seed of its membership). A backend name is one server in "
        "every pool: the same name in two pools must have the same URL.",
    ),
}
POOL_KEYS = tuple(POOL_KEY_DOCS)
# lb_config keys that say where Redis is: one Redis serves every pool, so they are
# only accepted in the top-level lb_config.
POOL_ONLY_AT_TOP = frozenset(
    {"serviceFQDN", "servicePort", "username", "password", "timeout", "database"}
)
# Distinct model names whose pool is remembered (bounded: model names come from clients).
_CACHE_SIZE = 1024
_GLOB_CHARS = frozenset("*?[")


def is_pattern(model: str) -> bool:
    """Is this `models` entry a glob pattern rather than an exact name?"""
    return any(char in _GLOB_CHARS for char in model)


@dataclass
class PoolSpec:
    """One pool as configured: its name, what it serves, its backends and policy."""

    name: str
    backends: list[Backend]
    lb_policy: str
    lb_config: LbConfigSection
    # Exact model names and glob patterns routed here (empty for the single-pool file).
    models: tuple[str, ...] = ()
    # Takes requests whose model no pool lists (the single-pool file's one pool does).
    default: bool = False


class PoolMap:
    """model -> pool, by the rule in the module docstring; built once per process."""

    def __init__(self, pools: list[PoolSpec]) -> None:
        if not pools:
            raise ValueError("at least one pool is needed")
        self.pools = list(pools)
        self.by_name = {pool.name: pool for pool in self.pools}
        self.exact: dict[str, PoolSpec] = {}
        self.patterns: list[tuple[re.Pattern[str], PoolSpec]] = []
        for pool in self.pools:
            for model in pool.models:
                if is_pattern(model):
                    self.patterns.append((re.compile(translate(model)), pool))
                else:
                    self.exact.setdefault(model, pool)
        self.default = next((pool for pool in self.pools if pool.default), None)
        # A request without a model: the default pool, else the first one.
        self.modelless = self.default or self.pools[0]
        self._cache: dict[str, PoolSpec | None] = {}

    def select(self, model: str) -> PoolSpec | None:
        """The pool serving *model*; None when no pool lists it and none is the default."""
        if not model:
            return self.modelless
        pool = self.exact.get(model)
        if pool is not None:
            return pool
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = next((p for regex, p in self.patterns if regex.match(model)), self.default)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[model] = found
        return found

    def names(self) -> list[str]:
        return [pool.name for pool in self.pools]
