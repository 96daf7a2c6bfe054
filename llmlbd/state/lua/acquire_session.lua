-- session_affinity: keep a session on one backend (consistent hashing with bounded loads),
-- and reserve, atomically, at a cost that does not grow with the pool.
-- KEYS[1] inflight HASH   KEYS[2] leases HASH   KEYS[3] workers ZSET   KEYS[4] drained SET
-- KEYS[5] lr:weights HASH (members and weights; '#digest', '#min_weight')
-- KEYS[6] the index ZSET of the request: lr:all (no model asked) or lr:model:<model>
-- KEYS[7] lr:any ZSET   KEYS[8] lr:all ZSET   KEYS[9] lr:sum HASH (totals per index ZSET)
-- KEYS[10] the session's STRING (its backend), or absent for a request without a session
-- ARGV[1] request id   ARGV[2] worker id   ARGV[3] lease ttl (ms)   ARGV[4] per-backend cap of
--   requests in flight (0: none)   ARGV[5] model ('' for any)   ARGV[6] digest of the caller's
--   membership   ARGV[7] random seed (ties of the least-loaded fallback)   ARGV[8] load factor
--   c >= 1   ARGV[9] session TTL (ms)   ARGV[10] '1' when the request has a session
--   ARGV[11] slack: requests a backend may always take above the proportional bound
--   ARGV[12] '1' for a dry run (explain: no reservation, no write; returns {backend or
--   false, reason, the session's current backend or '', {name, in flight, bound, status}
--   per backend looked at})   ARGV[13] n
-- ARGV[13+i] the first n distinct backends of the session's ring order (i = 1..n)
-- ARGV[14+n..] names excluded for this request
-- Bound (Mirrokni, Thorup, Zadimoghaddam 2018): backend i may take the request while
--   in_flight_i + 1 <= ceil(c x (total in flight + 1) x w_i / sum of weights) + slack, the
--   totals over the eligible backends (those in the request's index ZSETs, less the
--   excluded): read from lr:sum, not summed. The slack keeps a lightly loaded fleet sticky:
--   at 1 request in flight over 3 backends the proportional bound alone is 1, and every
--   overlapping request of a session would move it.
-- The session's backend if it may take it, else the first of the n ring backends that may;
-- if none of them may, the least loaded eligible backend (the ordered index), random among
-- ties; the same without a session.
-- return {backend, in-flight, reason} with reason 'sticky' (the session's backend),
--   'ring' (a new session), 'moved' (its backend is down, drained, excluded or over the
--   bound), 'no_session' (least loaded); or {false, reason}: 'cap', 'model', 'none',
--   'resync' (the index follows another membership: index_sync.lua, then again). A request
--   id that holds a lease already gets that lease's backend (and the session follows it).
local request_id, worker, lease_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cap, model = tonumber(ARGV[4]), ARGV[5]
local factor, session_ttl, has_session = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10] == '1'
local slack, dry, n = tonumber(ARGV[11]), ARGV[12] == '1', tonumber(ARGV[13])
local H = 13
if redis.call('HGET', KEYS[5], '#digest') ~= ARGV[6] then return {false, 'resync'} end
local base = pool_base(KEYS[1], ':inflight')
if not dry then outlier_due(base) end  -- half-open backends whose cool-down ended
math.randomseed(tonumber(ARGV[7]))
local excluded = {}
for i = H + n + 1, #ARGV do excluded[ARGV[i]] = true end
local zsets = {KEYS[6]}
if model ~= '' then zsets[2] = KEYS[7] end

-- Totals over the eligible backends, less the excluded ones.
local total, units = 0, 0
for _, zset in ipairs(zsets) do
  local t = redis.call('HMGET', KEYS[9], zset .. '#n', zset .. '#w')
  total, units = total + (tonumber(t[1]) or 0), units + (tonumber(t[2]) or 0)
end
for name in pairs(excluded) do
  for _, zset in ipairs(zsets) do
    if redis.call('ZSCORE', zset, name) then
      total = total - tonumber(redis.call('HGET', KEYS[1], name) or '0')
      units = units - weight_units(tonumber(redis.call('HGET', KEYS[5], name)) or 1)
    end
  end
end

local saw_cap, saw_usable, saw_model_miss = false, false, false
local rows = {}  -- dry run: name -> {name, in flight, bound, status}
local function load(name) return tonumber(redis.call('HGET', KEYS[1], name) or '0') end
-- May this backend take the request (the load bound aside)? A backend found ineligible
-- here but placed in the index was changed behind the index's back: it is re-placed.
local function usable(name)
  if excluded[name] then return false, 'unavailable' end
  local why = ineligible(KEYS[4], base .. ':backend:' .. name, name, model)
  if why then
    if why == 'model' then saw_model_miss = true
    elseif not dry then index_place(base, name) end
    return false, 'unavailable'
  end
  saw_usable = true
  if cap > 0 and load(name) >= cap then
    saw_cap = true
    return false, 'cap'
  end
  return true
end
local function bound_of(name)
  if units <= 0 then return 0 end
  local w = weight_units(tonumber(redis.call('HGET', KEYS[5], name)) or 1)
  return math.ceil(factor * (total + 1) * w / units) + slack
end
-- May it take the request, the bound included?
local function fits(name)
  local ok, status = usable(name)
  local count, bound = load(name), bound_of(name)
  if ok and count + 1 > bound then ok, status = false, 'over_bound' end
  if dry then rows[name] = {name, count, bound, ok and 'ok' or status} end
  return ok
end

local chosen, reason
local current = has_session and redis.call('GET', KEYS[10]) or false
if has_session then
  if current and redis.call('HEXISTS', KEYS[5], current) == 1 and fits(current) then
    chosen, reason = current, 'sticky'
  else
    reason = current and 'moved' or 'ring'
    for i = 1, n do
      local name = ARGV[H + i]
      if name ~= current and fits(name) then chosen = name; break end
    end
  end
end
if not chosen then
  -- No session, or none of the first ring backends within the bound: least load.
  local score_limit = math.huge
  if cap > 0 then score_limit = cap / (tonumber(redis.call('HGET', KEYS[5], '#min_weight')) or 1) end
  local capped
  chosen, capped = index_least(zsets, usable, score_limit)
  if capped then saw_cap = true end
  reason = reason or 'no_session'
end
if not chosen then
  if saw_cap then return {false, 'cap'} end
  if saw_usable then return {false, 'none'} end
  if saw_model_miss or (model ~= '' and redis.call('ZCARD', KEYS[6]) + redis.call('ZCARD', KEYS[7]) == 0
      and redis.call('ZCARD', KEYS[8]) > 0) then
    return {false, 'model'}
  end
  return {false, 'none'}
end
if dry then  -- every ring backend passed, then the session's and the chosen one
  local order, out, listed = {unpack(ARGV, H + 1, H + n)}, {}, {}
  if current and redis.call('HEXISTS', KEYS[5], current) == 1 then order[#order + 1] = current end
  order[#order + 1] = chosen
  for _, name in ipairs(order) do
    if not listed[name] then
      listed[name] = true
      if not rows[name] then fits(name) end
      out[#out + 1] = rows[name]
    end
  end
  return {chosen, reason, current or '', out}
end
local count
count, chosen = reserve(KEYS[1], KEYS[2], KEYS[3], chosen, request_id, worker, lease_ttl, clock())
if has_session then redis.call('SET', KEYS[10], chosen, 'PX', session_ttl) end
return {chosen, count, reason}
