-- Pick the eligible backend with the fewest requests in flight (per unit of
-- weight) and reserve a slot on it, atomically.
-- KEYS[1] inflight HASH   KEYS[2] leases HASH   KEYS[3] workers ZSET   KEYS[4] drained SET
-- KEYS[5..4+n] metrics HASH of each candidate, in the order of ARGV's names
-- ARGV[1] request id   ARGV[2] worker id   ARGV[3] lease ttl (ms)
-- ARGV[4] per-backend cap (0: none)   ARGV[5] model ('' for any)   ARGV[6] n
-- ARGV[7..6+n] candidate names, shuffled by the caller so that ties go to a random one
-- ARGV[7+n..6+2n] candidate weights
-- return {backend, in-flight after reserving}, or {false, reason} with reason
--   'cap' (every eligible backend at the cap), 'model' (no candidate serves the model),
--   'none' (every candidate down or drained), 'duplicate' (request id already leased)
local request_id, worker, ttl, cap, model = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local n = tonumber(ARGV[6])
local best, best_score
local saw_eligible, saw_model_miss = false, false
for i = 1, n do
  local name = ARGV[6 + i]
  local why = ineligible(KEYS[4], KEYS[4 + i], name, model)
  if why == 'model' then
    saw_model_miss = true
  elseif not why then
    saw_eligible = true
    local count = tonumber(redis.call('HGET', KEYS[1], name) or '0')
    if cap == 0 or count < cap then
      local score = count / tonumber(ARGV[6 + n + i])
      if not best_score or score < best_score then best, best_score = name, score end
    end
  end
end
if not best then
  if saw_eligible then return {false, 'cap'} end
  if saw_model_miss then return {false, 'model'} end
  return {false, 'none'}
end
local count = reserve(KEYS[1], KEYS[2], KEYS[3], best, request_id, worker, ttl, now_ms())
if not count then return {false, 'duplicate'} end
return {best, count}
