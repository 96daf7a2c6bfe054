-- Read what changes with every request (in-flight counts, drained set) and, only when
-- the collector published since the caller's copy, every backend's metrics: one round
-- trip per decision whatever the pool size, the metrics at most once per refresh.
-- KEYS[1] inflight HASH   KEYS[2] drained SET   KEYS[3] metrics_version STRING
-- KEYS[4..] metrics HASH of each backend (none when the caller's copy is recent enough)
-- ARGV[1] the metrics version of the caller's copy ('' for none)
-- return {now_ms, inflight as flat list, drained members, metrics version, ejected
--   (backend, until_ms) flat list of the ejected whose cool-down or probe still runs,
--   metrics flat list of each backend of KEYS[4..] (only when the version differs)}
local version = redis.call('GET', KEYS[3]) or '0'
local ejected_key = pool_base(KEYS[2], ':drained') .. ':ejected'
local reply = {clock(), redis.call('HGETALL', KEYS[1]), redis.call('SMEMBERS', KEYS[2]), version,
               redis.call('ZRANGEBYSCORE', ejected_key, '(' .. clock(), '+inf', 'WITHSCORES')}
if version ~= ARGV[1] then
  for i = 4, #KEYS do reply[#reply + 1] = redis.call('HGETALL', KEYS[i]) end
end
return reply
