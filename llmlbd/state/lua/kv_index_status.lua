-- Liveness of one backend's KV-event stream, and clearing its part of the precise index.
-- KEYS[1] kvx_state HASH   KEYS[2] kvx gpu ZSET   KEYS[3] kvx offload ZSET
-- KEYS[4] kvx_live ZSET backend -> live_until (ms), its members the backends whose index
--   is trusted (a clear also drops the backend from its blocks' `kvx_holders:<hash>`)
-- ARGV[1] collector id   ARGV[2] 'live': connected, the index may be trusted for ARGV[3] ms;
--   'silent': not connected (the index is not trusted until the stream is live again);
--   'clear': drop every block (the stream restarted, lost events, or the backend left),
--   reason in ARGV[4]; the index is not trusted until the next 'live' or batch
-- return the number of blocks the backend holds now (both tiers)
local now = now_ms()
local what = ARGV[2]
local base = pool_base(KEYS[4], ':kvx_live')
local name = string.sub(KEYS[1], #base + #':kvx_state:' + 1)
if what == 'live' then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'live_until', now + tonumber(ARGV[3]))
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), name)
elseif what == 'silent' then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'live_until', 0)
  redis.call('ZREM', KEYS[4], name)
elseif what == 'clear' then
  kvx_clear(base, name, KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], name)
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'live_until', 0, 'cleared_at', now,
             'cleared_reason', ARGV[4], 'seq', -1)
  redis.call('HINCRBY', KEYS[1], 'clears', 1)
else
  return redis.error_reply('kv_index_status: unknown mode ' .. tostring(what))
end
return redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3])
