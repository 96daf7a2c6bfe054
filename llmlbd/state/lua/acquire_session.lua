-- session_affinity: keep a session on one backend (consistent hashing with bounded loads),
-- and reserve, atomically.
-- KEYS[1] inflight HASH   KEYS[2] leases HASH   KEYS[3] workers ZSET   KEYS[4] drained SET
-- KEYS[5] the session's STRING (its backend), or absent for a request without a session
-- KEYS[5+i] metrics HASH of candidate i (i = 1..n), candidates in the session's ring order
-- ARGV[1] request id   ARGV[2] worker id   ARGV[3] lease ttl (ms)   ARGV[4] per-backend cap of
--   requests in flight (0: none)   ARGV[5] model ('' for any)   ARGV[6] n   ARGV[7] load factor
--   c >= 1   ARGV[8] session TTL (ms)   ARGV[9] '1' when the request has a session
--   ARGV[10] slack: requests a backend may always take above the proportional bound
--   ARGV[11] '1' for a dry run (explain: reads only; returns {backend or false, reason,
--   the session's current backend or '', {name, in flight, bound, status} per candidate})
-- ARGV[11+i] candidate names, in ring order from the session's hash (without a session: shuffled)
-- ARGV[11+n+i] weights   ARGV[11+2n+i] '1' if excluded for this attempt
-- Bound (Mirrokni, Thorup, Zadimoghaddam 2018): backend i may take the request while
--   in_flight_i + 1 <= ceil(c x (total in flight + 1) x w_i / sum of weights) + slack. The
--   slack keeps a lightly loaded fleet sticky: at 1 request in flight over 3 backends the
--   proportional bound alone is 1, and every overlapping request of a session would move it.
-- return {backend, in-flight, reason} with reason 'sticky' (the session's backend),
--   'ring' (a new session: first backend on its ring within the bound), 'moved' (its backend
--   is down, drained, excluded or over the bound: the next one on the ring), 'no_session'
--   (least loaded); or {false, reason}: 'cap', 'model', 'none'. A request id that holds a
--   lease already gets that lease's backend (and the session follows it).
local request_id, worker, lease_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cap, model, n = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local factor, session_ttl, has_session = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9] == '1'
local H = 11
local slack = tonumber(ARGV[10])
local dry = ARGV[11] == '1'
local M = has_session and 5 or 4  -- metrics keys start after KEYS[M]
local now = now_ms()

local inflight, pickable, eligible = {}, {}, {}  -- eligible: up, undrained, not excluded
local total, weights = 0, 0
local saw_eligible, saw_model_miss = false, false
for i = 1, n do
  local name = ARGV[H + i]
  local count = tonumber(redis.call('HGET', KEYS[1], name) or '0')
  inflight[i] = count
  local why = ineligible(KEYS[4], KEYS[M + i], name, model)
  if why == 'model' then saw_model_miss = true end
  if why == nil and ARGV[H + 2 * n + i] ~= '1' then
    eligible[i] = true
    total = total + count
    weights = weights + tonumber(ARGV[H + n + i])
    saw_eligible = true
    if cap == 0 or count < cap then pickable[i] = true end
  end
end
local function within(i)
  local bound = math.ceil(factor * (total + 1) * tonumber(ARGV[H + n + i]) / weights) + slack
  return pickable[i] and inflight[i] + 1 <= bound
end

local chosen, reason
local current = has_session and redis.call('GET', KEYS[5]) or false
if has_session then
  for i = 1, n do
    if ARGV[H + i] == current and within(i) then chosen, reason = i, 'sticky' end
  end
  if not chosen then
    for i = 1, n do
      if within(i) then chosen = i; break end
    end
    reason = current and 'moved' or 'ring'
  end
end
if not chosen then
  -- No session, or every backend is at its bound (only possible under a cap): least load.
  for i = 1, n do
    if pickable[i] and (chosen == nil or inflight[i] / tonumber(ARGV[H + n + i])
        < inflight[chosen] / tonumber(ARGV[H + n + chosen])) then
      chosen = i
    end
  end
  reason = reason or 'no_session'
end
if not chosen then
  if dry then return {false, saw_eligible and 'cap' or (saw_model_miss and 'model' or 'none')} end
  if saw_eligible then return {false, 'cap'} end
  if saw_model_miss then return {false, 'model'} end
  return {false, 'none'}
end
local name = ARGV[H + chosen]
if dry then
  local rows = {}
  for i = 1, n do
    local status = 'ok'
    if not eligible[i] then status = 'unavailable' elseif not pickable[i] then status = 'cap'
    elseif not within(i) then status = 'over_bound' end
    local bound = weights > 0 and math.ceil(factor * (total + 1) * tonumber(ARGV[H + n + i]) / weights) + slack or 0
    rows[#rows + 1] = {ARGV[H + i], inflight[i], bound, status}
  end
  return {name, reason, current or '', rows}
end
local count
count, name = reserve(KEYS[1], KEYS[2], KEYS[3], name, request_id, worker, lease_ttl, now)
if has_session then redis.call('SET', KEYS[5], name, 'PX', session_ttl) end
return {name, count, reason}
