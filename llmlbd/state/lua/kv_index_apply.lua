-- Apply one or more KV-event batches of one backend to the precise prefix index.
-- KEYS[1] kvx_state HASH of the backend   KEYS[2] kvx gpu ZSET   KEYS[3] kvx offload ZSET
-- KEYS[4] the backend's metrics HASH (num_gpu_blocks bounds the gpu tier)
-- KEYS[5] kvx_live ZSET backend -> live_until (ms), for backends whose index is trusted
-- Also kept: `kvx_holders:<hash>` SET per block, the backends holding it in either tier
-- (named from the pool's base like the ordered index's keys: the same hash tag).
-- ARGV[1] collector id   ARGV[2] last seq applied   ARGV[3] server time of the last batch (s)
-- ARGV[4] blocks kept per tier when num_gpu_blocks is unknown   ARGV[5] liveness TTL (ms)
-- ARGV[6] block size the events carry ('' if none)   ARGV[7..] operations, in order:
--   'C'                      AllBlocksCleared: both tiers emptied
--   'S', tier, n, h1..hn     BlockStored of n hashes (tier 'gpu' or 'offload')
--   'R', tier, h             BlockRemoved
-- return {stored, removed, dropped over the bound, lag (ms, Redis clock - batch time)}
local now = now_ms()
local tiers = {gpu = KEYS[2], offload = KEYS[3]}
local other = {[KEYS[2]] = KEYS[3], [KEYS[3]] = KEYS[2]}
local base = pool_base(KEYS[5], ':kvx_live')
local name = string.sub(KEYS[1], #base + #':kvx_state:' + 1)
local stored, removed = 0, 0
local i = 7
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'C' then
    kvx_clear(base, name, KEYS[2], KEYS[3])
    redis.call('HINCRBY', KEYS[1], 'clears', 1)
    i = i + 1
  elseif op == 'S' then
    local key, n = tiers[ARGV[i + 1]], tonumber(ARGV[i + 2])
    local members = {}
    for j = 1, n do
      members[#members + 1] = now
      members[#members + 1] = ARGV[i + 2 + j]
      redis.call('SADD', base .. ':kvx_holders:' .. ARGV[i + 2 + j], name)
      if #members >= 1000 then redis.call('ZADD', key, unpack(members)); members = {} end
    end
    if #members > 0 then redis.call('ZADD', key, unpack(members)) end
    stored = stored + n
    i = i + 3 + n
  elseif op == 'R' then
    local key = tiers[ARGV[i + 1]]
    if redis.call('ZREM', key, ARGV[i + 2]) == 1 then
      removed = removed + 1
      kvx_unhold(base, name, other[key], {ARGV[i + 2]})
    end
    i = i + 3
  else
    return redis.error_reply('kv_index_apply: unknown operation ' .. tostring(op))
  end
end
-- Bounded: a backend cannot hold more than its KV cache; the oldest go first when events
-- were lost (a missed BlockRemoved) and the set overflows.
local dropped = 0
local blocks = tonumber(redis.call('HGET', KEYS[4], 'num_gpu_blocks') or '')
local caps = {[KEYS[2]] = (blocks and blocks > 0) and blocks or tonumber(ARGV[4]), [KEYS[3]] = tonumber(ARGV[4])}
for key, limit in pairs(caps) do
  local over = redis.call('ZCARD', key) - limit
  if over > 0 then
    local popped, hashes = redis.call('ZPOPMIN', key, over), {}
    for p = 1, #popped, 2 do hashes[#hashes + 1] = popped[p] end
    kvx_unhold(base, name, other[key], hashes)
    dropped = dropped + over
  end
end
local lag = math.max(0, now - math.floor(tonumber(ARGV[3]) * 1000))
redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'ts', ARGV[3], 'applied_at', now, 'lag_ms', lag,
           'owner', ARGV[1], 'live_until', now + tonumber(ARGV[5]))
redis.call('ZADD', KEYS[5], now + tonumber(ARGV[5]), name)
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'block_size', ARGV[6]) end
redis.call('HINCRBY', KEYS[1], 'stored', stored)
redis.call('HINCRBY', KEYS[1], 'removed', removed)
return {stored, removed, dropped, lag}
