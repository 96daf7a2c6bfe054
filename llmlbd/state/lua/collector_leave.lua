-- A collector stops cleanly: it gives up its backends and its heartbeat now,
-- so the others take its backends at their next claim instead of after the lease.
-- KEYS[1] collectors ZSET   KEYS[2] scrape_owners HASH
-- ARGV[1] collector id   ARGV[2..n] backend names to release if owned by it
-- return the number of backends released
local released = 0
for i = 2, #ARGV do
  local entry = redis.call('HGET', KEYS[2], ARGV[i])
  if entry and string.match(entry, '^(%S+)') == ARGV[1] then
    redis.call('HDEL', KEYS[2], ARGV[i])
    released = released + 1
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
return released
