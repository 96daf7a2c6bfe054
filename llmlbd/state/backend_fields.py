"""Field names of a backend's metrics hash (``PoolKeys.backend(name)``).

The collector writes these; policies and ``llmlbctl`` read them. A field that
is absent means "unknown" (the source did not expose it), never zero.
Numbers are stored as decimal strings, lists as comma-separated names.
"""

WAITING = "waiting"  # requests queued in the engine
RUNNING = "running"  # requests being decoded
KV_USAGE = "kv_usage"  # KV-cache use, 0..1
LORA_RUNNING = "lora_running"  # adapters in the running batch, comma-separated
LORA_WAITING = "lora_waiting"  # adapters waiting to be loaded, comma-separated
MAX_LORA = "max_lora"  # adapter slots on the server
BLOCK_SIZE = "block_size"  # tokens per KV block
NUM_GPU_BLOCKS = "num_gpu_blocks"  # KV blocks on the GPU(s)
PREFIX_QUERIES = "prefix_queries"  # prefix-cache queried tokens (counter)
PREFIX_HITS = "prefix_hits"  # prefix-cache hit tokens (counter)
# Speed and capacity, derived by the collector from the engine's own histograms and
# gauges over its recent scrapes (collector/speed.py); the least_busy wait estimate.
SERVICE_S = "service_s"  # mean seconds a recent request held a running slot
PREFILL_S = "prefill_s"  # mean seconds from a recent request's start to its first token
SLOTS = "slots"  # requests the engine runs at once (learned: see collector/speed.py)
MODELS = "models"  # served model ids (base and adapters), comma-separated
MODELS_AT = "models_at"  # when MODELS was refreshed (ms since the epoch)
SCRAPED_AT = "scraped_at"  # when the metrics were read (ms since the epoch)
SCRAPE_MS = "scrape_ms"  # how long the scrape took (ms)
# llmlbd's own in-flight count on the backend when the scrape was published (the
# collector_publish script reads it in the same step): the load filters compare it
# with the count now to see the requests sent and finished since the scrape.
INFLIGHT_AT_SCRAPE = "inflight_at_scrape"
HEALTH = "health"  # "up", "down" or "unknown"
FAILS = "fails"  # consecutive failed health checks or scrapes
SUCCESSES = "successes"  # consecutive successful health checks
LAST_ERROR = "last_error"  # short text of the last failure
URL = "url"  # the backend's base URL, for operators

HEALTH_UP = "up"
HEALTH_DOWN = "down"
HEALTH_UNKNOWN = "unknown"
