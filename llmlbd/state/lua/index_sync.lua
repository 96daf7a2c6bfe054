-- Record the pool's membership in the ordered index and rebuild the index from it,
-- the drained set and the metrics hashes (a membership change, or Redis lost its data);
-- the outlier ejection state of former members is dropped.
-- KEYS[1] inflight HASH   KEYS[2] drained SET   KEYS[3] lr:weights HASH
-- ARGV[1] digest of the membership   ARGV[2..] name, weight pairs (every member)
-- return the number of members placed in the index (eligible now)
local base = pool_base(KEYS[1], ':inflight')
redis.call('DEL', KEYS[3])
local min_weight
for i = 2, #ARGV, 2 do
  local weight = tonumber(ARGV[i + 1])
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  if min_weight == nil or weight < min_weight then min_weight = weight end
end
redis.call('HSET', KEYS[3], '#digest', ARGV[1], '#min_weight', tostring(min_weight or 1))
-- Outlier state of backends no longer members goes with them.
for _, key in ipairs({base .. ':ejected', base .. ':outlier'}) do
  local names = key == base .. ':ejected' and redis.call('ZRANGE', key, 0, -1) or redis.call('HKEYS', key)
  for _, name in ipairs(names) do
    if redis.call('HEXISTS', KEYS[3], name) == 0 then
      redis.call('ZREM', base .. ':ejected', name)
      redis.call('HDEL', base .. ':outlier', name)
    end
  end
end
index_rebuild(base)
return redis.call('HLEN', base .. ':lr:placed')
