-- Pick the eligible backend with the fewest requests in flight (per unit of
-- weight), random among ties, and reserve a slot on it, atomically, in O(log n):
-- the candidates come from the ordered index (_lib.lua), not from a walk of the pool.
-- KEYS[1] inflight HASH   KEYS[2] leases HASH   KEYS[3] workers ZSET   KEYS[4] drained SET
-- KEYS[5] lr:weights HASH (members; field '#digest')
-- KEYS[6] the ZSET to pick from: lr:all (no model asked) or lr:model:<model>
-- KEYS[7] lr:any ZSET (model list unknown: serves every model)   KEYS[8] lr:all ZSET
-- ARGV[1] request id   ARGV[2] worker id   ARGV[3] lease ttl (ms)
-- ARGV[4] per-backend cap (0: none)   ARGV[5] model ('' for any)
-- ARGV[6] digest of the caller's membership (names and weights)
-- ARGV[7] random seed (integer) for the tie-break   ARGV[8..] names excluded for this request
-- return {backend, in-flight after reserving} (a request id that holds a lease already:
--   that lease's), or {false, reason} with reason
--   'cap' (every eligible backend at the cap), 'model' (no eligible backend serves the
--   model), 'none' (every member down, drained, ejected or excluded), 'resync' (the index was built from another membership, or lost:
--   the caller runs index_sync.lua and tries again)
local request_id, worker, ttl, cap, model = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
if redis.call('HGET', KEYS[5], '#digest') ~= ARGV[6] then return {false, 'resync'} end
local base = pool_base(KEYS[1], ':inflight')
outlier_due(base)  -- half-open backends whose cool-down ended are pickable again
math.randomseed(tonumber(ARGV[7]))
local excluded = {}
for i = 8, #ARGV do excluded[ARGV[i]] = true end
local zsets = {KEYS[6]}
if model ~= '' then zsets[2] = KEYS[7] end

local saw_cap, saw_usable = false, false
-- May this indexed backend take the request? A backend found ineligible here was
-- changed behind the index's back (a direct write): it is re-placed, then skipped.
local function usable(name)
  if excluded[name] then return false end
  if ineligible(KEYS[4], base .. ':backend:' .. name, name, model) then
    index_place(base, name)
    return false
  end
  saw_usable = true
  if cap > 0 and tonumber(redis.call('HGET', KEYS[1], name) or '0') >= cap then
    saw_cap = true
    return false
  end
  return true
end

-- A backend of weight w is under the cap only while its score is below cap / w: past
-- cap / (lightest weight) nobody is (with uniform weights: right after the first group).
local score_limit = math.huge
if cap > 0 then score_limit = cap / (tonumber(redis.call('HGET', KEYS[5], '#min_weight')) or 1) end
local best, capped = index_least(zsets, usable, score_limit)
if capped then saw_cap = true end
if not best then
  if saw_cap then return {false, 'cap'} end
  if saw_usable then return {false, 'none'} end
  if model ~= '' and redis.call('ZCARD', KEYS[6]) + redis.call('ZCARD', KEYS[7]) == 0
      and redis.call('ZCARD', KEYS[8]) > 0 then
    return {false, 'model'}
  end
  return {false, 'none'}
end
local count, held = reserve(KEYS[1], KEYS[2], KEYS[3], best, request_id, worker, ttl, clock())
return {held, count}
