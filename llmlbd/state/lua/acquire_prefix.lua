-- prefix_cache: find the longest cached prefix, weigh it against load, pick, reserve
-- and record the prefix for the chosen backend, atomically.
-- A prefix key is a HASH backend -> last use (ms, Redis clock); a backend holds
-- level j when its field is there and younger than the key TTL. A backend's match
-- is the number of consecutive levels, from the first, that it holds.
-- Cost: only the backends named in the prompt's prefix keys (the holders) are read one
-- by one, and leading levels named by very many backends only where needed (see "wide"
-- below); the least load of the pool (the load bound) and the least loaded backend (the
-- fallback) come from the ordered index (_lib.lua, docs/redis-keys.md), walked from its
-- lowest score and stopped as soon as nothing further can be less loaded. Weighted mode
-- and dry runs read every member instead (min-max normalisation; one row per member),
-- which makes a dry run the full recomputation the tests compare a pick with.
-- KEYS[1] inflight HASH   KEYS[2] leases HASH   KEYS[3] workers ZSET   KEYS[4] drained SET
-- KEYS[5] lr:weights HASH (members; field '#digest')
-- KEYS[6] the index ZSET to pick from: lr:all (no model asked) or lr:model:<model>
-- KEYS[7] lr:any ZSET   KEYS[8] lr:all ZSET
-- The prefix HASHes of the prompt's levels (`<base>:prefix:<hash>`, ARGV's `hashes`) and of
-- the entries evicted by earlier calls (`evicted`), a member's metrics HASH and its
-- prefix_owned ZSET (block hash -> last use ms) are named from the pool's base key, like
-- the index's model ZSETs (same hash tag, same slot): one argument for a prompt's hashes
-- rather than one key each (a long prompt has ~130 levels).
-- ARGV[1] one JSON object (cjson), decoded once:
--   request_id, worker, lease_ttl_ms, cap (per-backend in-flight cap, 0: none),
--   model ('' for any), digest (of the caller's membership, as acquire_least_request),
--   seed (integer, for the random tie-breaks), excluded [names] for this attempt (their
--   entries kept), prefix_ttl_ms, stale_after_ms (metrics), min_match_blocks,
--   max_load_gap, max_load_ratio, max_kv_usage (0..1, for affinity),
--   entries_per_backend (default index size), tokens_per_block (sizes the index from
--   num_gpu_blocks x block_size), mode ('bounded' or 'weighted'), shared_follow (bool),
--   weights {prefix, queue, kv, inflight} (weighted mode), dry (true for explain: reads
--   only, reserves and writes nothing), wide_level_holders (a level named by more
--   backends is looked up, not read whole, when it leads the prompt),
--   refresh_ms (a level's field and TTL are rewritten for the chosen backend only
--   when its field is at least this old: see the record part at the end),
--   tie_sample (the fallback's least-full-index choice looks at this many of the backends
--   tied at the least load, drawn at random: all of them when there are no more),
--   hashes [block hash of level j] and level_blocks [blocks covered by level j] j = 1..m,
--   shortest prefix first,
--   evicted [block hash of eviction k] and evicted_by [its backend] k = 1..e
-- return {backend, in-flight, reason, matched blocks of the chosen backend, longest match
--   of any usable backend (blocks), that backend or '', fields healed, {evicted: backend,
--   hash, backend, hash, ...}}, or {false, reason} with reason 'cap', 'model', 'none' or
--   'resync' (as acquire_least_request); a request id that holds a lease already gets
--   {its backend, in-flight, 'held', 0, 0, '', 0, {}} and nothing is recorded. A dry run
--   returns {backend or false, reason, {name, status, matched blocks, load, KV use or '',
--   index occupancy} per member}.
-- Reasons: 'affinity' (longest match within the load bound), 'shared_prefix' (the match
--   ends where other prompts already branched off: a new conversation on a common system
--   prompt: its least loaded in-bound holder with shared_follow, else spread by load and
--   index occupancy), 'overloaded' (a match existed but was out
--   of bounds), 'miss', 'weighted_hit', 'weighted'.
-- A level's HASH may also hold the field '#': how many prompts branched off after it (a
-- backend name never starts with '#').
local args = cjson.decode(ARGV[1])
local request_id, worker, lease_ttl = args.request_id, args.worker, args.lease_ttl_ms
local cap, model = args.cap, args.model
local level_blocks, evicted_by = args.level_blocks, args.evicted_by
local m, e = #level_blocks, #evicted_by
local ttl, stale_after = args.prefix_ttl_ms, args.stale_after_ms
local min_match, gap, ratio = args.min_match_blocks, args.max_load_gap, args.max_load_ratio
local max_kv, default_entries, tokens_per_block = args.max_kv_usage, args.entries_per_backend, args.tokens_per_block
local mode = args.mode
local w_prefix, w_queue, w_kv, w_inflight = args.weights.prefix, args.weights.queue, args.weights.kv, args.weights.inflight
local dry = args.dry
if redis.call('HGET', KEYS[5], '#digest') ~= args.digest then return {false, 'resync'} end
local base = pool_base(KEYS[1], ':inflight')
outlier_due(base)  -- half-open backends whose cool-down ended are pickable again
-- Level j's key and block hash; the keys are named from the pool's base key (see the header).
local prefix_base = base .. ':prefix:'
local level_hashes = args.hashes
local LK = {}
for j = 1, m do LK[j] = prefix_base .. level_hashes[j] end
math.randomseed(args.seed)
local excluded = {}
for _, name in ipairs(args.excluded) do excluded[name] = true end
local zsets = {KEYS[6]}
if model ~= '' then zsets[2] = KEYS[7] end
local now = now_ms()

-- One backend, read once (prefix_backend in _lib.lua), plus entries: its index's size,
-- its share of the KV cache it reports (else entries_per_backend).
local info = {}
local R = {info = info, zsets = zsets, all_key = KEYS[8], model = model, base = base, dry = dry,
           stale = {}, saw_eligible = false, now = now, stale_after = stale_after,
           excluded = excluded, cap = cap}
local function backend(name)
  local c = prefix_backend(R, name)
  if c.usable and c.entries == nil then
    local blocks, block_size = c.blocks, c.block_size
    if blocks and block_size and blocks > 0 and block_size > 0 then
      c.entries = math.max(1, math.floor(blocks * block_size / tokens_per_block))
    else
      c.entries = default_entries
    end
  end
  return c
end
R.read = backend
-- How full a backend's index is (its share of its estimated KV cache).
local function occupancy(name)
  local c = info[name]
  if c.occupancy == nil then
    c.occupancy = redis.call('ZCARD', base .. ':prefix_owned:' .. name) / c.entries
  end
  return c.occupancy
end

-- Past score cap / (lightest weight) nobody is under the cap.
local score_limit = math.huge
if cap > 0 then score_limit = cap / (tonumber(redis.call('HGET', KEYS[5], '#min_weight')) or 1) end
R.score_limit = score_limit

-- Longest prefix per holder. Every level is read, even past the end of the match,
-- because the chosen backend is written at every level: what points at removed, down,
-- drained or expired holders is dropped from each key on the way.
-- Except levels 1..wide: the leading levels each named by more than WIDE backends (a
-- system prompt the pool shares). match(wide) reads only the levels after them, and
-- looks up in them (HGET) just the backends it found there: every backend matching
-- deeper than `wide` is found so, but those matching `wide` levels or fewer are not.
-- The decision stands when such a deeper match wins the bounded pick (nothing shallower
-- can beat it); otherwise match(0) reads every level (see "Cost per decision" in
-- docs/policies/prefix_cache.md).
local WIDE = args.wide_level_holders
local matched, holders, healed = {}, {}, 0
-- Level j's field for name (its last use, ms; false: no field), read at most once per
-- call: the walk's HGETALLs fill it in as they go, an HGET the rest. The record part
-- below uses it to skip levels the chosen backend refreshed a moment ago.
local function used_at(j, name)
  local c = backend(name)
  c.used = c.used or {}
  local used = c.used[j]
  if used == nil then
    used = tonumber(redis.call('HGET', LK[j], name) or '') or false
    c.used[j] = used
  end
  return used
end
local function held(j, name)  -- level j's field for name is there and young enough
  local used = used_at(j, name)
  return used and now - used <= ttl
end
local function trusted(name, levels)  -- see below: the owned set must still have it
  local owned = base .. ':prefix_owned:' .. name
  while levels > 0 do
    if redis.call('ZSCORE', owned, level_hashes[levels]) then break end
    levels = levels - 1
  end
  return levels
end
local function match(wide)
  matched, holders = {}, {}
  for j = wide + 1, m do
    local key = LK[j]
    local fields = redis.call('HGETALL', key)
    for f = 1, #fields, 2 do
      local name, used = fields[f], tonumber(fields[f + 1]) or 0
      if string.sub(name, 1, 1) ~= '#' then  -- else: the branch counter, not a holder
        local c = backend(name)
        c.used = c.used or {}
        c.used[j] = used
        if not c.member or c.why == 'down' or c.why == 'drained' or now - used > ttl then
          if not dry then redis.call('HDEL', key, name) end
          healed = healed + 1
        elseif c.usable then
          local before = matched[name]
          if before == nil and j == wide + 1 then
            before = 0
            while before < wide and held(before + 1, name) do before = before + 1 end
          end
          if before == j - 1 then
            matched[name] = j
            if j == wide + 1 then holders[#holders + 1] = name end
          end
        end
      end
    end
  end
  -- A per-backend cap may have dropped a holder's deepest entries from its owned set
  -- (their fields go when the evicting worker's next call passes them): trust a level
  -- only while the owned set still has it.
  for name, levels in pairs(matched) do matched[name] = trusted(name, levels) end
end
local full = dry or mode == 'weighted'
local wide = 0
if not full then
  while wide < m and redis.call('HLEN', LK[wide + 1]) > WIDE do wide = wide + 1 end
end
match(wide)
local function blocks_of(levels)
  if levels == nil or levels == 0 then return 0 end
  return level_blocks[levels]
end

-- The candidates compared one by one, in random order (the first best wins: a uniform
-- tie-break): the holders, or every member when the whole pool is read.
local names, n, pickable, load, kv, waiting, match_blocks
local best_blocks, best_name, best_levels, branches
local function compare()
  names = holders
  if full then
    names = {}
    for _, name in ipairs(redis.call('HKEYS', KEYS[5])) do
      if string.sub(name, 1, 1) ~= '#' then names[#names + 1] = name end
    end
  end
  for i = #names, 2, -1 do
    local r = math.random(i)
    names[i], names[r] = names[r], names[i]
  end
  n = #names
  pickable, load, kv, waiting, match_blocks = {}, {}, {}, {}, {}
  for i = 1, n do
    local c = backend(names[i])
    pickable[i], load[i], kv[i], waiting[i] = c.pickable, c.load, c.kv, c.waiting
    match_blocks[i] = blocks_of(matched[names[i]])
  end
  -- The longest usable match, whatever its load (for the decision record).
  best_blocks, best_name, best_levels = 0, '', 0
  for i = 1, n do
    if match_blocks[i] > best_blocks then
      best_blocks, best_name, best_levels = match_blocks[i], names[i], matched[names[i]]
    end
  end
  -- Did other prompts already branch off where this one leaves the index? Then the match
  -- is a prefix many prompts share (a system prompt), not this conversation's history.
  branches = 0
  if best_levels > 0 and best_levels < m then
    branches = tonumber(redis.call('HGET', LK[best_levels], '#') or '0')
  end
end
compare()

-- The least load (index_least_load) and the fallback (index_least_loaded, the least full
-- index among a sample of tie_sample of the backends tied at the least load) from the
-- ordered index: _lib.lua.
local SAMPLE = args.tie_sample
local function least_pool_load() return index_least_load(R, n, pickable, load) end
local function least_loaded_indexed() return index_least_loaded(R, names, max_kv, SAMPLE, occupancy) end
local function replace_stale() reader_replace_stale(R) end

-- A new conversation on a prefix the pool shares: no backend read matches deeper than
-- the wide levels, and prompts already branched off after them. The bounded pick would
-- then take some in-bound backend holding every wide level, and that match being the
-- longest and shared, send the request by load (shared_prefix) whichever backend it is:
-- a random sample of the deepest wide level's fields shows that one exists (and names
-- the longest match, uniformly among the sampled). Nil when the sample does not show it.
local shared_wide_pick
local function shared_wide(bound)
  if wide == m or blocks_of(wide) < min_match or blocks_of(wide) == 0 then return false end
  local branched = tonumber(redis.call('HGET', LK[wide], '#') or '0')
  if branched == 0 then return false end
  local pairs_ = redis.call('HRANDFIELD', LK[wide], 16, 'WITHVALUES')
  local sample = {}
  for f = 1, #pairs_, 2 do
    local name, used = pairs_[f], tonumber(pairs_[f + 1]) or 0
    local c = string.sub(name, 1, 1) ~= '#' and backend(name)
    if c and (not c.member or c.why == 'down' or c.why == 'drained' or now - used > ttl) then
      redis.call('HDEL', LK[wide], name)  -- healed as a full read would (never dry here)
      healed = healed + 1
    elseif c and c.usable then
      sample[#sample + 1] = name
    end
  end
  for i = #sample, 2, -1 do  -- HRANDFIELD's order is not random
    local r = math.random(i)
    sample[i], sample[r] = sample[r], sample[i]
  end
  local longest, pick
  for _, name in ipairs(sample) do
    local c, levels = backend(name), 0
    while levels < wide and held(levels + 1, name) do levels = levels + 1 end
    if trusted(name, levels) == wide then
      longest = longest or name
      if c.pickable and c.load <= bound and kv_fits(c, max_kv) and not (pick and c.load >= info[pick].load) then
        pick = name  -- the least loaded sampled (followed with shared_follow)
      end
    end
    if longest and pick and not args.shared_follow then break end
  end
  if not (longest and pick) then return false end
  best_blocks, best_name, best_levels, branches = blocks_of(wide), longest, wide, branched
  shared_wide_pick = pick
  return true
end

local min_load, refused
if full then
  min_load, refused = read_least_load(R, n, pickable, load)
else
  min_load, refused = least_pool_load()
  if min_load and wide > 0 then
    local bound = math.max(min_load + gap, min_load * ratio)
    local pick = bounded_pick(n, pickable, match_blocks, load, kv, min_match, bound, max_kv)
    if not (pick and matched[names[pick]] > wide) and not (best_levels <= wide and shared_wide(bound)) then
      -- A match of `wide` levels or fewer may decide: read every level after all.
      wide = 0
      match(0)
      compare()
      min_load, refused = least_pool_load()
    end
  end
end
if min_load == nil then
  replace_stale()
  return {false, refused}
end

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
      if m > 0 and match_blocks[i] >= min_match then score = w_prefix * (matched[names[i]] or 0) / m end
      if waiting[i] then
        score = score + w_queue * ((q_max == q_min) and 1 or (q_max - waiting[i]) / (q_max - q_min))
      end
      if kv[i] then score = score + w_kv * math.max(0, math.min(1, 1 - kv[i])) end
      score = score + w_inflight * ((l_max == l_min) and 1 or (l_max - load[i]) / (l_max - l_min))
      if best_score == nil or score > best_score then chosen, best_score = names[i], score end
    end
  end
  reason = (blocks_of(matched[chosen]) >= min_match and blocks_of(matched[chosen]) > 0) and 'weighted_hit' or 'weighted'
else
  -- Bounded load: follow the longest match among backends whose load is within
  -- max(min + gap, min x ratio) and whose KV use (when fresh) is under the limit.
  local bound = math.max(min_load + gap, min_load * ratio)
  local pick, best_match = bounded_pick(n, pickable, match_blocks, load, kv, min_match, bound, max_kv)
  if shared_wide_pick or (pick and branches > 0 and best_match == best_blocks) then
    reason = 'shared_prefix'
    if args.shared_follow then chosen = shared_wide_pick or names[pick] end  -- else by load
  elseif pick then
    chosen, reason = names[pick], 'affinity'
  else
    reason = (best_blocks >= min_match and best_blocks > 0) and 'overloaded' or 'miss'
  end
  if not chosen and full then
    -- Least load, then the emptiest index; preferring backends whose KV cache is not full
    -- (fresh metrics).
    local occupancies = {}
    for i = 1, n do
      if pickable[i] then occupancies[i] = occupancy(names[i]) end
    end
    chosen = names[least_loaded(n, pickable, load, kv, max_kv, occupancies)]
  elseif not chosen then
    chosen = least_loaded_indexed()
  end
end
replace_stale()

local name = chosen
local chosen_levels = matched[name] or 0
if matched[name] == nil and wide > 0 then  -- not read: it matches `wide` levels or fewer
  while chosen_levels < wide and held(chosen_levels + 1, name) do chosen_levels = chosen_levels + 1 end
  chosen_levels = trusted(name, chosen_levels)
end
if dry then
  local rows = {}
  for i = 1, n do
    local c, status = info[names[i]], 'ok'
    if excluded[names[i]] then status = 'excluded'
    elseif c.why == 'down' or c.why == 'drained' then status = 'unavailable'
    elseif c.why == 'ejected' then status = 'ejected'
    elseif not c.usable then status = 'model'
    elseif not c.pickable then status = 'cap' end
    rows[#rows + 1] = {names[i], status, match_blocks[i], tostring(c.load or ''),
                       tostring(c.kv or ''), c.usable and tostring(occupancy(names[i])) or ''}
  end
  return {name, reason, rows}
end
local count, held = reserve(KEYS[1], KEYS[2], KEYS[3], name, request_id, worker, lease_ttl, now)
if held ~= name then return {held, count, 'held', 0, 0, '', 0, {}} end  -- its lease, as it was

-- Record (or refresh) every level for the chosen backend: its owned set's score (the
-- eviction order, exact) always; the level's field and the key's TTL only when the field
-- is missing or at least refresh_ms old (refresh_ms < ttl). A field is written with the
-- key's PEXPIRE, so a key outlives each of its fields by the TTL; skipping a refresh
-- leaves the entry alive for at least ttl - refresh_ms after its last use.
local owned = base .. ':prefix_owned:' .. name
if best_levels > 0 and best_levels < m then
  redis.call('HINCRBY', LK[best_levels], '#', 1)
end
local refresh = args.refresh_ms
local used_by = info[name].used or {}
local members = {}
for j = 1, m do
  local key = LK[j]
  local used = used_by[j]
  if used == nil then used = used_at(j, name) end
  if not used or now - used >= refresh or used > now then
    redis.call('HSET', key, name, now)
    redis.call('PEXPIRE', key, ttl)
  end
  members[#members + 1] = now
  members[#members + 1] = level_hashes[j]
  if #members >= 500 then redis.call('ZADD', owned, unpack(members)); members = {} end
end
if #members > 0 then redis.call('ZADD', owned, unpack(members)) end
local evicted = {}
if m > 0 then
  redis.call('PEXPIRE', owned, ttl)
  redis.call('ZREMRANGEBYSCORE', owned, '-inf', now - ttl)
  local over = redis.call('ZCARD', owned) - info[name].entries
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
  local evicted_hash = args.evicted[k]
  local key = prefix_base .. evicted_hash
  local holder = evicted_by[k]
  if redis.call('HEXISTS', KEYS[5], holder) == 0
      or not redis.call('ZSCORE', base .. ':prefix_owned:' .. holder, evicted_hash) then
    healed = healed + redis.call('HDEL', key, holder)
  end
end

return {name, count, reason, blocks_of(chosen_levels), best_blocks, best_name, healed, evicted}
