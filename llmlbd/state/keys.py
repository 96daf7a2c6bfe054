"""Every Redis key llmlbd uses, built in one place.

All keys of a pool share the hash tag ``{pool}`` so that each Lua script's keys
live in one Redis Cluster slot. Nothing outside this module formats a key.
See docs/redis-keys.md for the full reference.
"""

from __future__ import annotations

from llmlbd.config.names import validate_name

__all__ = ["PoolKeys", "validate_name"]

PREFIX = "llmlb"


class PoolKeys:
    """The keys of one pool (one fleet of interchangeable backends)."""

    __slots__ = ("_base", "pool")

    def __init__(self, pool: str = "default") -> None:
        self.pool = validate_name("pool name", pool)
        self._base = f"{PREFIX}:{{{pool}}}"

    # proxy state -------------------------------------------------------------
    @property
    def inflight(self) -> str:
        """HASH backend -> requests in flight (maintained by the lease scripts)."""
        return f"{self._base}:inflight"

    @property
    def leases(self) -> str:
        """HASH request id -> "backend worker_id": one entry per reserved request."""
        return f"{self._base}:leases"

    @property
    def workers(self) -> str:
        """ZSET proxy worker id -> heartbeat deadline (ms, Redis clock)."""
        return f"{self._base}:workers"

    @property
    def drained(self) -> str:
        """SET of backend names that take no new requests."""
        return f"{self._base}:drained"

    @property
    def ejected(self) -> str:
        """ZSET outlier backend -> until when (ms, Redis clock) it takes no request; a member
        whose time has passed is half-open (lua/_lib.lua; docs/reliability.md)."""
        return f"{self._base}:ejected"

    @property
    def outlier(self) -> str:
        """HASH backend -> "streak level kind window_ms probe": its consecutive failures,
        ejections in a row, last failure kind, probe window and probe request id."""
        return f"{self._base}:outlier"

    @property
    def rr_counter(self) -> str:
        """STRING counter shared by round_robin across workers and replicas."""
        return f"{self._base}:rr"

    @property
    def members(self) -> str:
        """HASH backend name -> JSON {url, weight}: runtime pool membership."""
        return f"{self._base}:members"

    # ordered index of eligible backends (lua/_lib.lua; docs/redis-keys.md) -----
    @property
    def index_weights(self) -> str:
        """HASH member -> weight, plus `#digest` and `#min_weight`: the index's membership."""
        return f"{self._base}:lr:weights"

    @property
    def index_placed(self) -> str:
        """HASH eligible backend -> the model list it is indexed under (`*`: unknown)."""
        return f"{self._base}:lr:placed"

    @property
    def index_all(self) -> str:
        """ZSET eligible backend -> in-flight / weight."""
        return f"{self._base}:lr:all"

    @property
    def index_any_model(self) -> str:
        """ZSET eligible backend whose model list is unknown -> in-flight / weight."""
        return f"{self._base}:lr:any"

    @property
    def index_sum(self) -> str:
        """HASH `<zset>#n` / `<zset>#w`: requests in flight and weights (millionths) of the
        members of each index ZSET (session_affinity's load bound in O(1))."""
        return f"{self._base}:lr:sum"

    def index_model(self, model: str) -> str:
        """ZSET eligible backend serving *model* -> in-flight / weight (all of them when '')."""
        return f"{self._base}:lr:model:{model}" if model else self.index_all

    # collector state ---------------------------------------------------------
    def backend(self, name: str) -> str:
        """HASH of one backend's scraped metrics and health (fields in backend_fields)."""
        return f"{self._base}:backend:{name}"

    @property
    def metrics_version(self) -> str:
        """STRING counter of collector publishes: tells workers their metrics copy is old."""
        return f"{self._base}:metrics_version"

    @property
    def collectors(self) -> str:
        """ZSET collector id -> heartbeat deadline (ms)."""
        return f"{self._base}:collectors"

    @property
    def scrape_owners(self) -> str:
        """HASH backend -> "collector_id deadline_ms": which collector scrapes it."""
        return f"{self._base}:scrape_owners"

    # prefix_cache state ------------------------------------------------------
    def prefix(self, block_hash: str) -> str:
        """HASH backend -> last use (ms) of the prefix ending in *block_hash*; field `#`
        counts the prompts that branched off after it (see docs/policies/prefix_cache.md)."""
        return f"{self._base}:prefix:{block_hash}"

    def prefix_pattern(self) -> str:
        """SCAN pattern matching every prefix key of the pool."""
        return f"{self._base}:prefix:*"

    @property
    def prefix_owned(self) -> str:
        """Base name of the per-backend ZSETs capping prefix entries."""
        return f"{self._base}:prefix_owned"

    def prefix_owned_by(self, backend: str) -> str:
        """ZSET block hash -> last use (ms) of the prefix keys pointing at *backend*."""
        return f"{self._base}:prefix_owned:{backend}"

    # precise prefix index (KV events) -----------------------------------------------
    def kv_blocks(self, backend: str, tier: str) -> str:
        """ZSET vLLM block hash (decimal) -> when stored (ms): the blocks *backend* holds in
        *tier* (`gpu`, or `offload` for CPU/disk media), as its KV events say."""
        return f"{self._base}:kvx:{backend}:{tier}"

    def kv_state(self, backend: str) -> str:
        """HASH of *backend*'s KV-event stream: last seq, lag, liveness, counters."""
        return f"{self._base}:kvx_state:{backend}"

    def kv_holders(self, block_hash: int | str) -> str:
        """SET of the backends holding vLLM block *block_hash* in either tier: the inversion
        of the `kv_blocks` ZSETs (the precise index's reverse side)."""
        return f"{self._base}:kvx_holders:{block_hash}"

    @property
    def kv_live(self) -> str:
        """ZSET backend -> live_until (ms): the backends whose KV-event index is trusted."""
        return f"{self._base}:kvx_live"

    # session_affinity state ------------------------------------------------------------
    def session(self, session_digest: str) -> str:
        """STRING: the backend of a session (keyed by a digest of its id), with a TTL."""
        return f"{self._base}:session:{session_digest}"
