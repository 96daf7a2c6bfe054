-- Read what changes with every request for a few backends only: their in-flight counts
-- and drained flags, plus the pool's metrics version (has the collector published since
-- the caller's copy?). O(number of backends asked), whatever the pool size.
-- KEYS[1] inflight HASH   KEYS[2] drained SET   KEYS[3] metrics_version STRING
-- ARGV[1..] backend names
-- return {now_ms, in-flight count of each (false: none), drained flag of each (0/1), version}
local counts = {}
local drained = {}
if #ARGV > 0 then counts = redis.call('HMGET', KEYS[1], unpack(ARGV)) end
for i = 1, #ARGV do drained[i] = redis.call('SISMEMBER', KEYS[2], ARGV[i]) end
return {now_ms(), counts, drained, redis.call('GET', KEYS[3]) or '0'}
