-- Release the in-flight slot of one request; a second release is a no-op.
-- KEYS[1] inflight HASH   KEYS[2] leases HASH
-- ARGV[1] request id
-- return 1 if a lease was released, 0 if there was none (already released or reaped)
local lease = redis.call('HGET', KEYS[2], ARGV[1])
if not lease then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
local backend = string.match(lease, '^(%S+)')
if redis.call('HINCRBY', KEYS[1], backend, -1) <= 0 then
  redis.call('HDEL', KEYS[1], backend)  -- absent means 0; never leave a negative count
end
index_score(pool_base(KEYS[1], ':inflight'), backend)  -- keep the ordered index in step
return 1
