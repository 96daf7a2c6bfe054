-- Drop the leases of dead workers and recount in-flight from the live leases.
-- KEYS[1] inflight HASH   KEYS[2] leases HASH   KEYS[3] workers ZSET
-- ARGV[1] a worker id to declare dead now ('' for none)
-- ARGV[2] '1' to recount even when no worker died (periodic reconciliation)
-- The ordered index (_lib.lua) follows the new counts; a recount also rebuilds it from
-- its members (heals drift and direct writes to drained/health).
-- return {leases reaped, workers declared dead}
local now = now_ms()
if ARGV[1] ~= '' then redis.call('ZADD', KEYS[3], 0, ARGV[1]) end
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #dead == 0 and ARGV[2] ~= '1' then return {0, 0} end
for _, worker in ipairs(dead) do redis.call('ZREM', KEYS[3], worker) end

local counts, reaped = {}, 0
local leases = redis.call('HGETALL', KEYS[2])
for i = 1, #leases, 2 do
  local backend, worker = string.match(leases[i + 1], '^(%S+) (%S+)')
  if redis.call('ZSCORE', KEYS[3], worker) then
    counts[backend] = (counts[backend] or 0) + 1
  else
    redis.call('HDEL', KEYS[2], leases[i])
    reaped = reaped + 1
  end
end
-- The in-flight hash is a cache of the lease counts: rewrite it from them.
local current = redis.call('HGETALL', KEYS[1])
for i = 1, #current, 2 do
  if not counts[current[i]] then redis.call('HDEL', KEYS[1], current[i]) end
end
for backend, count in pairs(counts) do redis.call('HSET', KEYS[1], backend, count) end
local base = pool_base(KEYS[1], ':inflight')
if ARGV[2] == '1' then
  index_rebuild(base)
else
  for i = 1, #current, 2 do index_score(base, current[i]) end  -- counts that went down
  for backend, _ in pairs(counts) do index_score(base, backend) end  -- and drift repaired
end
return {reaped, #dead}
