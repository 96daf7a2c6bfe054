-- Reserve a slot on a backend the caller already chose (policies that decide
-- in Python), unless it became ineligible since the caller's snapshot.
-- KEYS[1] inflight HASH   KEYS[2] leases HASH   KEYS[3] workers ZSET   KEYS[4] drained SET
-- KEYS[5] the backend's metrics HASH
-- ARGV[1] request id   ARGV[2] worker id   ARGV[3] lease ttl (ms)   ARGV[4] per-backend cap (0: none)
-- ARGV[5] model ('' for any)   ARGV[6] backend name
-- return {backend, in-flight after reserving} (a request id that holds a lease already:
--   that lease's), or {false, reason} ('cap', 'model', 'down', 'drained', 'ejected')
local name = ARGV[6]
local why = ineligible(KEYS[4], KEYS[5], name, ARGV[5])
if why then return {false, why} end
local cap = tonumber(ARGV[4])
if cap > 0 and tonumber(redis.call('HGET', KEYS[1], name) or '0') >= cap then return {false, 'cap'} end
local count, held = reserve(KEYS[1], KEYS[2], KEYS[3], name, ARGV[1], ARGV[2], tonumber(ARGV[3]), clock())
return {held, count}
