-- prefix_cache with index: precise. Longest run of leading blocks each backend holds
-- (from its KV events, collector/kv_events.py), weighed against load, pick and reserve,
-- atomically. Nothing is written to the index: the backends' own events are the truth.
-- KEYS[1] inflight HASH   KEYS[2] leases HASH   KEYS[3] workers ZSET   KEYS[4] drained SET
-- KEYS[4+i]      metrics HASH of candidate i (i = 1..n)
-- KEYS[4+n+i]    kvx_state HASH of candidate i (live_until: its index is trusted before it)
-- KEYS[4+2n+i]   kvx gpu ZSET of candidate i       KEYS[4+3n+i] kvx offload ZSET of candidate i
-- ARGV[1] request id   ARGV[2] worker id   ARGV[3] lease ttl (ms)   ARGV[4] per-backend cap of
--   requests in flight (0: none)   ARGV[5] model ('' for any)   ARGV[6] n   ARGV[7] metrics
--   stale after (ms)   ARGV[8] min match (blocks)   ARGV[9] max load gap   ARGV[10] max load
--   ratio   ARGV[11] max KV use for affinity   ARGV[12] '1': offloaded blocks count
--   ARGV[13] '1' for a dry run (explain: reads only)
-- ARGV[13+i] candidate names (shuffled: ties go to a random one)   ARGV[13+n+i] weights
-- ARGV[13+2n+i] '1' if excluded for this attempt   ARGV[14+3n..] the prompt's block hashes
-- return {backend, in-flight, reason, matched blocks, longest match of any usable backend,
--   that backend or '', backends with a live index} or {false, reason}: 'cap', 'model',
--   'none' or 'no_index' (no usable backend has a
--   live index: the caller routes with the approximate index instead). A dry run returns
--   {backend or false, reason, {name, status, matched, load, KV use or '', live} per candidate}.
--   A request id that holds a lease already gets {its backend, in-flight, 'held', 0, ...}.
local H = 13
local request_id, worker, lease_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cap, model, n = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local stale_after, min_match = tonumber(ARGV[7]), tonumber(ARGV[8])
local gap, ratio, max_kv = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local offloaded, dry = ARGV[12] == '1', ARGV[13] == '1'
local m = #ARGV - H - 3 * n
local now = now_ms()

local usable, pickable, live, matched = {}, {}, {}, {}
local load, kv, status = {}, {}, {}
local saw_eligible, saw_model_miss, live_count = false, false, 0
for i = 1, n do
  local name = ARGV[H + i]
  local why = ineligible(KEYS[4], KEYS[4 + i], name, model)
  status[i] = why or 'ok'
  if why == 'model' then saw_model_miss = true end
  if why == nil then
    usable[i] = true
    local f = redis.call('HMGET', KEYS[4 + i], 'scraped_at', 'waiting', 'running', 'kv_usage')
    local inflight = tonumber(redis.call('HGET', KEYS[1], name) or '0')
    local queued = 0
    local scraped = tonumber(f[1])
    if scraped and now - scraped <= stale_after then
      queued = (tonumber(f[2]) or 0) + (tonumber(f[3]) or 0)
      kv[i] = tonumber(f[4])
    end
    -- Our own requests or what the engine reports, whichever is larger (never both).
    load[i] = math.max(inflight, queued) / tonumber(ARGV[H + n + i])
    if ARGV[H + 2 * n + i] == '1' then
      status[i] = 'excluded'
    else
      saw_eligible = true
      if cap == 0 or inflight < cap then pickable[i] = true else status[i] = 'cap' end
    end
    if tonumber(redis.call('HGET', KEYS[4 + n + i], 'live_until') or '0') > now then
      live[i] = true
      live_count = live_count + 1
      local run = 0
      if m > 0 then
        local gpu = redis.call('ZMSCORE', KEYS[4 + 2 * n + i], unpack(ARGV, H + 3 * n + 1, #ARGV))
        local off = offloaded and redis.call('ZMSCORE', KEYS[4 + 3 * n + i], unpack(ARGV, H + 3 * n + 1, #ARGV)) or {}
        while run < m and (gpu[run + 1] or off[run + 1]) do run = run + 1 end
      end
      matched[i] = run
    end
  end
end

local min_load, refused = least_pickable_load(n, pickable, load, saw_eligible, saw_model_miss)
if min_load == nil then return {false, refused} end
if live_count == 0 and not dry then return {false, 'no_index'} end

local best_blocks, best_name = 0, ''
for i = 1, n do
  if usable[i] and (matched[i] or 0) > best_blocks then best_blocks, best_name = matched[i], ARGV[H + i] end
end

-- Bounded load: the longest match among backends whose load is within max(min + gap,
-- min x ratio) and whose fresh KV use is under the limit; equal matches: the least loaded.
local bound = math.max(min_load + gap, min_load * ratio)
local chosen = bounded_pick(n, pickable, matched, load, kv, min_match, bound, max_kv)
local reason
if chosen then
  reason = 'affinity'
else
  reason = (best_blocks >= min_match and best_blocks > 0) and 'overloaded' or 'miss'
  -- Least load, preferring a backend whose KV cache is not full (fresh metrics).
  chosen = least_loaded(n, pickable, load, kv, max_kv)
end

local name = ARGV[H + chosen]
if dry then
  local rows = {}
  for i = 1, n do
    rows[#rows + 1] = {ARGV[H + i], status[i], matched[i] or 0, tostring(load[i] or ''),
                       tostring(kv[i] or ''), live[i] and 1 or 0}
  end
  return {name, reason, rows}
end
local count, held = reserve(KEYS[1], KEYS[2], KEYS[3], name, request_id, worker, lease_ttl, now)
if held ~= name then return {held, count, 'held', 0, 0, '', 0, {}} end  -- its lease, as it was
return {name, count, reason, matched[chosen] or 0, best_blocks, best_name, live_count}
