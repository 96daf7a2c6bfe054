-- prefix_cache with index: precise. Longest run of leading blocks each backend holds
-- (from its KV events, collector/kv_events.py), weighed against load, pick and reserve,
-- atomically. Nothing is written to the index: the backends' own events are the truth.
-- Cost: the pool is not walked. The candidates are the holders of the prompt's leading
-- blocks, from the reverse index `kvx_holders:<hash>` (SET of the backends holding the
-- block in either tier, kept by kv_index_apply.lua / kv_index_status.lua); each one's
-- own leading run is then checked on its block sets. The least load (the load bound) and
-- the fallback come from the ordered index (_lib.lua), as in acquire_prefix.lua, and
-- "no usable backend has a live index" from the `kvx_live` ZSET. A dry run reads every
-- member instead (one row per member): the full recomputation the tests compare with.
-- KEYS[1] inflight HASH   KEYS[2] leases HASH   KEYS[3] workers ZSET   KEYS[4] drained SET
-- KEYS[5] lr:weights HASH (members; field '#digest')
-- KEYS[6] the index ZSET to pick from: lr:all (no model asked) or lr:model:<model>
-- KEYS[7] lr:any ZSET   KEYS[8] lr:all ZSET   KEYS[9] kvx_live ZSET (backend -> live_until)
-- A member's metrics HASH, its kvx gpu/offload ZSETs and the blocks' kvx_holders SETs are
-- named from the pool's base key, like the index's model ZSETs (same hash tag, same slot).
-- ARGV[1] one JSON object (cjson), decoded once:
--   request_id, worker, lease_ttl_ms, cap (per-backend in-flight cap, 0: none),
--   model ('' for any), digest (of the caller's membership, as acquire_least_request),
--   seed (integer, for the random tie-breaks), excluded [names] for this attempt,
--   stale_after_ms (metrics), min_match_blocks, max_load_gap, max_load_ratio,
--   max_kv_usage (0..1, for affinity), count_offloaded (bool), dry (true for explain:
--   reads only), wide_holders (a block held by more backends is "wide": see below),
--   hashes [the prompt's block hashes, decimal strings, first block first]
-- return {backend, in-flight, reason, matched blocks, longest match of any usable backend,
--   that backend or '', backends with a live index} or {false, reason}: 'cap', 'model',
--   'none', 'resync' (as acquire_least_request) or 'no_index' (no usable backend has a
--   live index: the caller routes with the approximate index instead). A dry run returns
--   {backend or false, reason, {name, status, matched, load, KV use or '', live} per member}.
--   A request id that holds a lease already gets {its backend, in-flight, 'held', 0, ...}.
-- Reasons: 'affinity' (longest match within the load bound), 'overloaded' (a match of at
--   least min_match blocks existed but was out of bounds), 'miss'.
local args = cjson.decode(ARGV[1])
local request_id, worker, lease_ttl = args.request_id, args.worker, args.lease_ttl_ms
local cap, model, dry = args.cap, args.model, args.dry
local stale_after, min_match = args.stale_after_ms, args.min_match_blocks
local gap, ratio, max_kv = args.max_load_gap, args.max_load_ratio, args.max_kv_usage
local offloaded, hashes, WIDE = args.count_offloaded, args.hashes, args.wide_holders
local m = #hashes
if redis.call('HGET', KEYS[5], '#digest') ~= args.digest then return {false, 'resync'} end
local base = pool_base(KEYS[1], ':inflight')
if not dry then outlier_due(base) end  -- half-open backends whose cool-down ended are pickable
math.randomseed(args.seed)
local excluded = {}
for _, name in ipairs(args.excluded) do excluded[name] = true end
local zsets = {KEYS[6]}
if model ~= '' then zsets[2] = KEYS[7] end
local now = now_ms()

-- One backend, read once (prefix_backend in _lib.lua).
local info = {}
local R = {info = info, zsets = zsets, all_key = KEYS[8], model = model, base = base, dry = dry,
           stale = {}, saw_eligible = false, now = now, stale_after = stale_after,
           excluded = excluded, cap = cap}
local function backend(name) return prefix_backend(R, name) end
R.read = backend
R.score_limit = math.huge  -- past cap / (lightest weight) nobody is under the cap
if cap > 0 then R.score_limit = cap / (tonumber(redis.call('HGET', KEYS[5], '#min_weight')) or 1) end

-- A usable backend's liveness and leading run (c.live, c.run): the blocks 1..run it holds
-- (gpu, and offload when counted), checked on its own sets in chunks, stopping at a gap.
local function run_of(name)
  local c = backend(name)
  if c.run ~= nil or not c.usable then return c end
  c.run = 0
  if tonumber(redis.call('ZSCORE', KEYS[9], name) or '0') <= now then return c end
  c.live = true
  local gpu, off = base .. ':kvx:' .. name .. ':gpu', base .. ':kvx:' .. name .. ':offload'
  local CHUNK = 256
  while c.run < m do
    local first, last = c.run + 1, math.min(m, c.run + CHUNK)
    local g = redis.call('ZMSCORE', gpu, unpack(hashes, first, last))
    local o = offloaded and redis.call('ZMSCORE', off, unpack(hashes, first, last)) or {}
    local k = 1
    while first + k - 1 <= last and (g[k] or o[k]) do k = k + 1 end
    c.run = c.run + k - 1
    if first + k - 1 <= last then break end
  end
  return c
end

-- The candidates, compared in random order (the first best wins: a uniform tie-break).
local names, seen = {}, {}
local function add(name)
  if seen[name] then return end
  seen[name] = true
  local c = run_of(name)
  if c.usable then names[#names + 1] = name end
end
local wide = 0
local function holders_key(j) return base .. ':kvx_holders:' .. hashes[j] end
local function shuffled(list)  -- in place, uniformly (a SET's reply order is not random)
  for i = #list, 2, -1 do
    local r = math.random(i)
    list[i], list[r] = list[r], list[i]
  end
  return list
end
if dry then
  for _, name in ipairs(redis.call('HKEYS', KEYS[5])) do
    if string.sub(name, 1, 1) ~= '#' then add(name) end
  end
elseif m > 0 then
  -- Every backend whose run reaches block j holds block j: the holders of block wide + 1
  -- include every backend matching deeper than `wide`. Blocks 1..wide are those held by
  -- more than WIDE backends (a system prompt the pool shares): the last wide block is
  -- found by binary search between a wide block and the end (any shape of the counts: the
  -- search ends at a wide block followed by one that is not).
  if redis.call('SCARD', holders_key(1)) > WIDE then
    local lo, hi = 1, m + 1
    while hi - lo > 1 do
      local mid = math.floor((lo + hi) / 2)
      if redis.call('SCARD', holders_key(mid)) > WIDE then lo = mid else hi = mid end
    end
    wide = lo
  end
  if wide < m then
    -- Read in random order. A holder nobody can beat ends the reading: pickable, at the
    -- least load (from the ordered index), under the KV limit, matching at least
    -- min_match blocks, and the block after its run held by nobody (so nobody matches
    -- more). The first such holder of a random order is a uniformly random one of those
    -- tied with it: the rule's own tie-break.
    local least = index_least_load(R, 0, {}, {})
    local list = shuffled(redis.call('SMEMBERS', holders_key(wide + 1)))
    for _, holder in ipairs(list) do
      add(holder)
      local c = info[holder]
      if least and c.pickable and c.run > 0 and c.run >= min_match and c.load == least
          and kv_fits(c, max_kv)
          and (c.run == m or redis.call('EXISTS', holders_key(c.run + 1)) == 0) then
        break
      end
    end
  end
end

local n, pickable, load, kv, matched
local best_blocks, best_name
local function compare()
  shuffled(names)
  n = #names
  pickable, load, kv, matched = {}, {}, {}, {}
  for i = 1, n do
    local c = info[names[i]]
    pickable[i], load[i], kv[i], matched[i] = c.pickable, c.load, c.kv, c.run
  end
  best_blocks, best_name = 0, ''  -- the longest usable match, whatever its load
  for i = 1, n do
    if matched[i] > best_blocks then best_blocks, best_name = matched[i], names[i] end
  end
end
compare()

local min_load, refused
if dry then
  min_load, refused = read_least_load(R, n, pickable, load)
else
  min_load, refused = index_least_load(R, n, pickable, load)
end
if min_load == nil then
  reader_replace_stale(R)
  return {false, refused}
end

-- Backends with a live index that may be matched (usable): counted one by one up to
-- WIDE live streams; past that, the live streams are counted (ZCOUNT) and taken to
-- include a usable one.
local live_count = 0
if dry then
  for _, name in ipairs(names) do
    if info[name].live then live_count = live_count + 1 end
  end
else
  local live = redis.call('ZRANGEBYSCORE', KEYS[9], '(' .. now, '+inf', 'LIMIT', 0, WIDE + 1)
  if #live > WIDE then
    live_count = redis.call('ZCOUNT', KEYS[9], '(' .. now, '+inf')
  else
    for _, name in ipairs(live) do
      if backend(name).usable then live_count = live_count + 1 end
    end
  end
  if live_count == 0 then
    reader_replace_stale(R)
    return {false, 'no_index'}
  end
end

-- Bounded load: the longest match among backends whose load is within max(min + gap,
-- min x ratio) and whose fresh KV use is under the limit; equal matches: the least loaded.
local bound = math.max(min_load + gap, min_load * ratio)
local chosen = bounded_pick(n, pickable, matched, load, kv, min_match, bound, max_kv)
if wide > 0 and wide >= min_match and not (chosen and matched[chosen] > wide) then
  -- Only a match of `wide` blocks or fewer may decide, and the last wide block has more
  -- than WIDE holders: a uniformly random sample of WIDE of them joins the candidates,
  -- read in random order. A holder matching all `wide` blocks at the least load, in the
  -- bound and under the KV limit ends the reading: nothing read after it could beat it
  -- (a sampled holder matches `wide` blocks at most: one matching more holds block
  -- wide + 1, and was read). Below min_match no sampled match could decide: no sample.
  for _, holder in ipairs(shuffled(redis.call('SRANDMEMBER', holders_key(wide), WIDE))) do
    add(holder)
    local c = info[holder]
    if c.pickable and c.run == wide and c.load == min_load and kv_fits(c, max_kv) then break end
  end
  compare()
  chosen = bounded_pick(n, pickable, matched, load, kv, min_match, bound, max_kv)
end
local name, reason
if chosen then
  name, reason = names[chosen], 'affinity'
else
  reason = (best_blocks >= min_match and best_blocks > 0) and 'overloaded' or 'miss'
  -- Least load, preferring a backend whose KV cache is not full (fresh metrics); ties:
  -- a uniformly random one.
  if dry then
    name = names[least_loaded(n, pickable, load, kv, max_kv)]
  else
    name = index_least_loaded(R, names, max_kv, nil, nil)
      or names[least_loaded(n, pickable, load, kv, max_kv) or 0]
  end
end
if not name then  -- the index lost a pickable backend (changed behind its back): rebuild
  reader_replace_stale(R)
  return {false, 'none'}
end
reader_replace_stale(R)

if dry then
  local rows = {}
  for i = 1, n do
    local c = info[names[i]]
    rows[#rows + 1] = {names[i], c.status, c.run or 0, tostring(c.load or ''),
                       tostring(c.kv or ''), c.live and 1 or 0}
  end
  for member, c in pairs(info) do  -- members not usable: not candidates, still a row
    if c.member and not c.usable then
      rows[#rows + 1] = {member, c.status, 0, '', '', 0}
    end
  end
  return {name, reason, rows}
end
local count, held = reserve(KEYS[1], KEYS[2], KEYS[3], name, request_id, worker, lease_ttl, now)
if held ~= name then return {held, count, 'held', 0, 0, '', 0, {}} end  -- its lease, as it was
return {name, count, reason, run_of(name).run, best_blocks, best_name, live_count}
