-- A collector proves it is alive and claims (or renews) its share of the backends.
-- Each backend is scraped by exactly one live collector: its entry in the owners
-- hash names the owner and a deadline. A collector renews its own entries; it
-- takes a backend that has no owner, whose deadline passed, or whose owner is no
-- longer alive, up to a fair share (ceil(backends / live collectors)); above its
-- share it lets go of the extra ones, so a collector that joins gets work.
-- Deadlines use Redis's clock (TIME), so clock skew between collectors is harmless.
-- KEYS[1] collectors ZSET (collector id -> heartbeat deadline, ms)
-- KEYS[2] scrape_owners HASH (backend -> "collector_id deadline_ms")
-- ARGV[1] this collector's id
-- ARGV[2] lease time (ms): how long the claim and the heartbeat last
-- ARGV[3..n] every backend name this collector knows
-- return the backend names this collector owns after the call
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local deadline = now + tonumber(ARGV[2])

redis.call('ZADD', KEYS[1], deadline, me)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local live = redis.call('ZCARD', KEYS[1])
local share = math.ceil((#ARGV - 2) / live)

local mine, free = {}, {}
for i = 3, #ARGV do
  local backend = ARGV[i]
  local entry = redis.call('HGET', KEYS[2], backend)
  if not entry then
    free[#free + 1] = backend
  else
    local owner, until_ms = string.match(entry, '^(%S+) (%d+)$')
    if owner == me then
      mine[#mine + 1] = backend
    elseif owner == nil or tonumber(until_ms) <= now
        or not redis.call('ZSCORE', KEYS[1], owner) then
      free[#free + 1] = backend
    end
  end
end

while #mine > share do
  redis.call('HDEL', KEYS[2], table.remove(mine))
end
for _, backend in ipairs(free) do
  if #mine >= share then break end
  mine[#mine + 1] = backend
end
local entry = me .. ' ' .. deadline
for _, backend in ipairs(mine) do
  redis.call('HSET', KEYS[2], backend, entry)
end
return mine
