-- A collector gives up backends now, so the others take them at their next claim
-- instead of after the lease: all of them when it stops cleanly (and its heartbeat
-- too), or the ones that left the pool's membership.
-- KEYS[1] collectors ZSET   KEYS[2] scrape_owners HASH
-- ARGV[1] collector id
-- ARGV[2] '1' to also drop the collector's heartbeat (it is stopping), else '0'
-- ARGV[3..n] backend names to release if owned by this collector
-- return the number of backends released
local released = 0
for i = 3, #ARGV do
  local entry = redis.call('HGET', KEYS[2], ARGV[i])
  if entry and string.match(entry, '^(%S+)') == ARGV[1] then
    redis.call('HDEL', KEYS[2], ARGV[i])
    released = released + 1
  end
end
if ARGV[2] == '1' then redis.call('ZREM', KEYS[1], ARGV[1]) end
return released
