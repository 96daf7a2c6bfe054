"""The age of every backend's metrics as a policy sees it: Redis TIME minus scraped_at.

One server-side read per sample, shared by the overload tests and
bench/collector_bench.py: a Python pipeline of hundreds of HGETs every
20 ms would cost the sampler (on the same cores) more CPU than the
collector under test.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AGES_LUA", "ages_reader"]

# KEYS: backend hashes; returns each one's age in ms (Redis clock), -1 if never written.
AGES_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local at = redis.call('HGET', key, 'scraped_at')
  out[i] = at and (now - tonumber(at)) or -1
end
return out
"""


def ages_reader(client: Any) -> Any:
    """A callable: ``reader(keys=[...])`` -> ages in ms, in the order of the keys."""
    return client.register_script(AGES_LUA)
