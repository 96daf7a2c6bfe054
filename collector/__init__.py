"""The llmlbd collector: every backend's metrics and health, kept fresh in Redis.

Modules, one concept each:

- ``exposition``: a targeted reader of the Prometheus/OpenMetrics text format
- ``sources``: where each field comes from (vLLM, legacy vLLM, SGLang, ..., metric_map)
- ``parse``: page text -> hash fields (pure)
- ``http11``, ``scrape``: the HTTP reads of /metrics, the health path, /v1/models
- ``health``: up/down hysteresis
- ``worker``: one backend's scrape/health/models schedule
- ``publish``: batched, ownership-fenced writes to the backend hashes
- ``reaper``: expires dead proxy workers' leases
- ``daemon``: ownership claims, threads, signals, READY=1; ``cli``: ``llmlbd collector``

Importing this package opens nothing and patches nothing. A process that
runs the collector calls `collector.daemon.main` (or ``python -m collector``);
with ``--concurrency gevent`` the entry point patches the process first.
"""
