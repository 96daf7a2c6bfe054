-- Read a pool's routing state in one round trip (a script, not a pipeline, so that it
-- runs on Redis Cluster too, where TIME cannot join a pipeline).
-- KEYS[1] inflight HASH   KEYS[2] drained SET   KEYS[3..] metrics HASH of each backend
-- return {now_ms, inflight as flat list, drained members, ejected (backend, until_ms) flat
--   list of the ejected whose cool-down or probe still runs, metrics flat list of each
--   backend...}
local ejected_key = pool_base(KEYS[2], ':drained') .. ':ejected'
local reply = {clock(), redis.call('HGETALL', KEYS[1]), redis.call('SMEMBERS', KEYS[2]),
               redis.call('ZRANGEBYSCORE', ejected_key, '(' .. clock(), '+inf', 'WITHSCORES')}
for i = 3, #KEYS do
  reply[#reply + 1] = redis.call('HGETALL', KEYS[i])
end
return reply
