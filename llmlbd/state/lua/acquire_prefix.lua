-- prefix_cache: find the longest cached prefix, weigh it against load, pick, reserve
-- and record the prefix for the chosen backend, atomically.
-- A prefix key is a HASH backend -> last use (ms, Redis clock); a backend holds
-- level j when its field is there and younger than the key TTL. A backend's match
-- is the number of consecutive levels, from the first, that it holds.
-- KEYS[1] inflight HASH   KEYS[2] leases HASH   KEYS[3] workers ZSET   KEYS[4] drained SET
-- KEYS[4+i]     metrics HASH of candidate i (i = 1..n)
-- KEYS[4+n+i]   prefix_owned ZSET of candidate i (block hash -> last use ms)
-- KEYS[4+2n+j]  prefix HASH of level j (j = 1..m), shortest prefix first
-- KEYS[4+2n+m+k] prefix HASH of an entry evicted by an earlier call (k = 1..e)
-- ARGV[1] one JSON object (cjson), decoded once:
--   request_id, worker, lease_ttl_ms, cap (per-backend in-flight cap, 0: none),
--   model ('' for any), prefix_ttl_ms, stale_after_ms (metrics), min_match_blocks,
--   max_load_gap, max_load_ratio, max_kv_usage (0..1, for affinity),
--   entries_per_backend (default index size), tokens_per_block (sizes the index from
--   num_gpu_blocks x block_size), mode ('bounded' or 'weighted'),
--   weights {prefix, queue, kv, inflight} (weighted mode), dry (true for explain: reads
--   only, reserves and writes nothing),
--   candidates [{name, weight, excluded}] i = 1..n, shuffled by the caller so that ties go
--     to a random one; an excluded candidate is ignored for this attempt, its entries kept,
--   level_blocks [blocks covered by level j] j = 1..m,
--   evicted_by [backend of eviction k] k = 1..e
-- return {backend, in-flight, reason, matched blocks of the chosen backend, longest match
--   of any usable backend (blocks), that backend or '', fields healed, {evicted: backend,
--   hash, backend, hash, ...}}, or {false, reason} with reason 'cap', 'model' or 'none'; a
--   request id that holds a lease already gets {its backend, in-flight, 'held', 0, 0, '',
--   0, {}} and nothing is recorded. A dry run returns {backend or false, reason,
--   {name, status, matched blocks, load, KV use or '', index occupancy} per candidate}.
-- Reasons: 'affinity' (longest match within the load bound), 'shared_prefix' (the match
--   ends where other prompts already branched off: a new conversation on a common system
--   prompt, spread by load and index occupancy), 'overloaded' (a match existed but was out
--   of bounds), 'miss', 'weighted_hit', 'weighted'.
-- A level's HASH may also hold the field '#': how many prompts branched off after it (a
-- backend name never starts with '#').
local args = cjson.decode(ARGV[1])
local request_id, worker, lease_ttl = args.request_id, args.worker, args.lease_ttl_ms
local cap, model = args.cap, args.model
local candidates, level_blocks, evicted_by = args.candidates, args.level_blocks, args.evicted_by
local n, m, e = #candidates, #level_blocks, #evicted_by
local ttl, stale_after = args.prefix_ttl_ms, args.stale_after_ms
local min_match, gap, ratio = args.min_match_blocks, args.max_load_gap, args.max_load_ratio
local max_kv, default_entries, tokens_per_block = args.max_kv_usage, args.entries_per_backend, args.tokens_per_block
local mode = args.mode
local w_prefix, w_queue, w_kv, w_inflight = args.weights.prefix, args.weights.queue, args.weights.kv, args.weights.inflight
local dry = args.dry
local names = {}
for i = 1, n do names[i] = candidates[i].name end
local now = now_ms()

-- Candidates: who may be picked, who may hold entries, and their load.
local index = {}        -- name -> i
local usable = {}       -- i -> true: may hold entries (eligible, maybe at the cap or excluded)
local pickable = {}     -- i -> true: may be picked now
local heal = {}         -- name -> true: its entries are dropped (down or drained)
local load, kv, waiting, entries_cap = {}, {}, {}, {}
local saw_eligible, saw_model_miss = false, false
for i = 1, n do
  local name = names[i]
  index[name] = i
  local why = ineligible(KEYS[4], KEYS[4 + i], name, model)
  if why == 'down' or why == 'drained' then
    heal[name] = true
  elseif why == 'model' then
    saw_model_miss = true
  elseif why == 'ejected' then
    heal[name] = false  -- an outlier in its cool-down: not pickable, its entries kept
  else
    usable[i] = true
    local f = redis.call('HMGET', KEYS[4 + i], 'scraped_at', 'waiting', 'running', 'kv_usage',
                         'num_gpu_blocks', 'block_size')
    local inflight = tonumber(redis.call('HGET', KEYS[1], name) or '0')
    local queued = 0
    local scraped = tonumber(f[1])
    if scraped and now - scraped <= stale_after then
      waiting[i] = tonumber(f[2])
      queued = (waiting[i] or 0) + (tonumber(f[3]) or 0)
      kv[i] = tonumber(f[4])
    end
    -- Requests this fleet of proxies sent, or what the engine reports if it has more
    -- (other clients): never both, which would count our own requests twice.
    load[i] = math.max(inflight, queued) / candidates[i].weight
    local blocks, block_size = tonumber(f[5]), tonumber(f[6])
    if blocks and block_size and blocks > 0 and block_size > 0 then
      entries_cap[i] = math.max(1, math.floor(blocks * block_size / tokens_per_block))
    else
      entries_cap[i] = default_entries
    end
    if not candidates[i].excluded then
      saw_eligible = true
      if cap == 0 or inflight < cap then pickable[i] = true end
    end
  end
end

-- Longest prefix per usable backend. Every level is read, even past the end of the
-- match, because the chosen backend is written at every level: what points at removed,
-- down, drained or expired holders is dropped from each key on the way.
local matched = {}      -- i -> levels held consecutively from the first
local healed = 0
for j = 1, m do
  local key = KEYS[4 + 2 * n + j]
  local fields = redis.call('HGETALL', key)
  for f = 1, #fields, 2 do
    local name, used = fields[f], tonumber(fields[f + 1]) or 0
    local i = index[name]
    if string.sub(name, 1, 1) == '#' then
      -- branch counter, not a holder
    elseif i == nil or heal[name] or now - used > ttl then
      if not dry then redis.call('HDEL', key, name) end
      healed = healed + 1
    elseif usable[i] and (matched[i] or 0) == j - 1 then
      matched[i] = j
    end
  end
end
-- A per-backend cap may have dropped a holder's deepest entries from its owned set
-- (their fields go when the evicting worker's next call passes them): trust a level
-- only while the owned set still has it.
for i, levels in pairs(matched) do
  while levels > 0 do
    local key = KEYS[4 + 2 * n + levels]
    if redis.call('ZSCORE', KEYS[4 + n + i], string.match(key, ':prefix:(.*)$')) then break end
    levels = levels - 1
  end
  matched[i] = levels
end
local function blocks_of(levels)
  if levels == nil or levels == 0 then return 0 end
  return level_blocks[levels]
end

-- The longest usable match, whatever its load (for the decision record).
local best_blocks, best_name, best_levels = 0, '', 0
for i = 1, n do
  if usable[i] and blocks_of(matched[i]) > best_blocks then
    best_blocks, best_name, best_levels = blocks_of(matched[i]), names[i], matched[i]
  end
end
-- Did other prompts already branch off where this one leaves the index? Then the match
-- is a prefix many prompts share (a system prompt), not this conversation's history.
local branches = 0
if best_levels > 0 and best_levels < m then
  branches = tonumber(redis.call('HGET', KEYS[4 + 2 * n + best_levels], '#') or '0')
end
-- How full each backend's index is (its share of its estimated KV cache).
local occupancy = {}
for i = 1, n do
  if usable[i] then occupancy[i] = redis.call('ZCARD', KEYS[4 + n + i]) / entries_cap[i] end
end

local min_load, refused = least_pickable_load(n, pickable, load, saw_eligible, saw_model_miss)
if min_load == nil then return {false, refused} end

local chosen, reason
if mode == 'weighted' then
  -- Scorers in [0, 1], weighted and summed (the inference-extension's v1 formulas):
  -- prefix = matched / total levels; queue and in-flight min-max normalised (all equal:
  -- 1); KV = 1 - use. Unknown or stale metrics score 0.
  local q_min, q_max, l_min, l_max
  for i = 1, n do
    if pickable[i] then
      if waiting[i] then
        q_min = math.min(q_min or waiting[i], waiting[i]); q_max = math.max(q_max or waiting[i], waiting[i])
      end
      l_min = math.min(l_min or load[i], load[i]); l_max = math.max(l_max or load[i], load[i])
    end
  end
  local best_score
  for i = 1, n do
    if pickable[i] then
      local score = 0
      if m > 0 and blocks_of(matched[i]) >= min_match then score = w_prefix * (matched[i] or 0) / m end
      if waiting[i] then
        score = score + w_queue * ((q_max == q_min) and 1 or (q_max - waiting[i]) / (q_max - q_min))
      end
      if kv[i] then score = score + w_kv * math.max(0, math.min(1, 1 - kv[i])) end
      score = score + w_inflight * ((l_max == l_min) and 1 or (l_max - load[i]) / (l_max - l_min))
      if best_score == nil or score > best_score then chosen, best_score = i, score end
    end
  end
  reason = (blocks_of(matched[chosen]) >= min_match and blocks_of(matched[chosen]) > 0) and 'weighted_hit' or 'weighted'
else
  -- Bounded load: follow the longest match among backends whose load is within
  -- max(min + gap, min x ratio) and whose KV use (when fresh) is under the limit.
  local bound = math.max(min_load + gap, min_load * ratio)
  local match_blocks = {}
  for i = 1, n do match_blocks[i] = blocks_of(matched[i]) end
  local best_match
  chosen, best_match = bounded_pick(n, pickable, match_blocks, load, kv, min_match, bound, max_kv)
  if chosen and branches > 0 and best_match == best_blocks then
    chosen, reason = nil, 'shared_prefix'
  elseif chosen then
    reason = 'affinity'
  else
    reason = (best_blocks >= min_match and best_blocks > 0) and 'overloaded' or 'miss'
  end
  if not chosen then
    -- Least load, then the emptiest index; preferring backends whose KV cache is not full
    -- (fresh metrics).
    chosen = least_loaded(n, pickable, load, kv, max_kv, occupancy)
  end
end

local name = names[chosen]
if dry then
  local rows = {}
  for i = 1, n do
    local status = 'ok'
    if candidates[i].excluded then status = 'excluded'
    elseif heal[names[i]] then status = 'unavailable'
    elseif heal[names[i]] == false then status = 'ejected'
    elseif not usable[i] then status = 'model'
    elseif not pickable[i] then status = 'cap' end
    rows[#rows + 1] = {names[i], status, blocks_of(matched[i]), tostring(load[i] or ''),
                       tostring(kv[i] or ''), tostring(occupancy[i] or '')}
  end
  return {name, reason, rows}
end
local count, held = reserve(KEYS[1], KEYS[2], KEYS[3], name, request_id, worker, lease_ttl, now)
if held ~= name then return {held, count, 'held', 0, 0, '', 0, {}} end  -- its lease, as it was

-- Record (or refresh) every level for the chosen backend.
local owned = KEYS[4 + n + chosen]
if best_levels > 0 and best_levels < m then
  redis.call('HINCRBY', KEYS[4 + 2 * n + best_levels], '#', 1)
end
local members = {}
for j = 1, m do
  local key = KEYS[4 + 2 * n + j]
  redis.call('HSET', key, name, now)
  redis.call('PEXPIRE', key, ttl)
  members[#members + 1] = now
  members[#members + 1] = string.match(key, ':prefix:(.*)$')
  if #members >= 500 then redis.call('ZADD', owned, unpack(members)); members = {} end
end
if #members > 0 then redis.call('ZADD', owned, unpack(members)) end
local evicted = {}
if m > 0 then
  redis.call('PEXPIRE', owned, ttl)
  redis.call('ZREMRANGEBYSCORE', owned, '-inf', now - ttl)
  local over = redis.call('ZCARD', owned) - entries_cap[chosen]
  if over > 0 then
    local popped = redis.call('ZPOPMIN', owned, over)
    for p = 1, #popped, 2 do
      evicted[#evicted + 1] = name
      evicted[#evicted + 1] = popped[p]
    end
  end
end

-- Entries evicted by earlier calls: drop the field unless the backend took the
-- prefix again since.
for k = 1, e do
  local key = KEYS[4 + 2 * n + m + k]
  local holder = evicted_by[k]
  local i = index[holder]
  if i == nil or not redis.call('ZSCORE', KEYS[4 + n + i], string.match(key, ':prefix:(.*)$')) then
    healed = healed + redis.call('HDEL', key, holder)
  end
end

return {name, count, reason, blocks_of(matched[chosen]), best_blocks, best_name, healed, evicted}
