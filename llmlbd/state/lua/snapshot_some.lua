-- Read what changes with every request for a few backends only: their in-flight counts,
-- drained flags and running outlier ejections, plus the pool's metrics version (has the
-- collector published since the caller's copy?). O(number of backends asked), whatever
-- the pool size.
-- KEYS[1] inflight HASH   KEYS[2] drained SET   KEYS[3] metrics_version STRING
-- ARGV[1..] backend names
-- return {now_ms, in-flight count of each (false: none), drained flag of each (0/1), version,
--   ejected (backend, until_ms) flat list of those asked whose cool-down or probe still runs}
local counts = {}
local drained = {}
local ejected = {}
if #ARGV > 0 then
  counts = redis.call('HMGET', KEYS[1], unpack(ARGV))
  local until_ms = redis.call('ZMSCORE', pool_base(KEYS[2], ':drained') .. ':ejected', unpack(ARGV))
  for i = 1, #ARGV do
    drained[i] = redis.call('SISMEMBER', KEYS[2], ARGV[i])
    if until_ms[i] and tonumber(until_ms[i]) > clock() then
      ejected[#ejected + 1] = ARGV[i]
      ejected[#ejected + 1] = until_ms[i]
    end
  end
end
return {clock(), counts, drained, redis.call('GET', KEYS[3]) or '0', ejected}
