-- A proxy worker proves it is alive: its leases stay valid for ttl more milliseconds.
-- KEYS[1] workers ZSET
-- ARGV[1] worker id   ARGV[2] ttl (ms)
-- return the new deadline (ms, Redis clock)
local deadline = now_ms() + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], deadline, ARGV[1])
return deadline
