-- Read a pool's routing state in one round trip (a script, not a pipeline, so that it
-- runs on Redis Cluster too, where TIME cannot join a pipeline).
-- KEYS[1] inflight HASH   KEYS[2] drained SET   KEYS[3..] metrics HASH of each backend
-- return {now_ms, inflight as flat list, drained members, metrics flat list of each backend...}
local reply = {now_ms(), redis.call('HGETALL', KEYS[1]), redis.call('SMEMBERS', KEYS[2])}
for i = 3, #KEYS do
  reply[#reply + 1] = redis.call('HGETALL', KEYS[i])
end
return reply
