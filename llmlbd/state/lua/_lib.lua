-- Shared helpers, prepended to every script by llmlbd/state/scripts.py.
-- Keys used here are always declared by the including script.

-- Redis's own clock in milliseconds: every replica and collector agrees on it.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The same clock, read once per script run (one decision, one instant).
local _now
local function clock()
  if not _now then _now = now_ms() end
  return _now
end

-- The pool's base key `llmlb:{pool}` from one of its keys and that key's suffix.
local function pool_base(key, suffix)
  return string.sub(key, 1, #key - #suffix)
end

-- The precise prefix index's reverse side (kv_index_apply.lua, kv_index_status.lua):
-- `kvx_holders:<hash>` SET of the backends holding vLLM block <hash> in either tier, the
-- inversion of their `kvx:<backend>:gpu|offload` ZSETs, kept in step with them. `name` no
-- longer holds `hashes` in one tier: it leaves their holders unless `other` (its other
-- tier's ZSET) still has them.
local function kvx_unhold(base, name, other, hashes)
  for _, h in ipairs(hashes) do
    if not redis.call('ZSCORE', other, h) then redis.call('SREM', base .. ':kvx_holders:' .. h, name) end
  end
end

-- Empty both tiers of backend `name` (ZSETs `gpu`, `off`) and its reverse entries.
local function kvx_clear(base, name, gpu, off)
  for _, key in ipairs({gpu, off}) do
    local start = 0
    while true do
      local batch = redis.call('ZRANGE', key, start, start + 999)
      if #batch == 0 then break end
      for _, h in ipairs(batch) do redis.call('SREM', base .. ':kvx_holders:' .. h, name) end
      start = start + #batch
    end
  end
  redis.call('DEL', gpu, off)
end

-- Outlier ejection (docs/reliability.md, "Outlier ejection"): `ejected` ZSET backend ->
-- the Redis time (ms) until which it takes no request. A member whose time has passed is
-- half-open: eligible again, and the next request reserved on it is its probe.
local function ejected(base, name)
  local until_ms = redis.call('ZSCORE', base .. ':ejected', name)
  return until_ms and tonumber(until_ms) > clock()
end

-- Why a backend cannot take this request, or nil when it can.
-- metrics_key: the backend's metrics HASH; model: requested model or ''.
local function ineligible(drained_key, metrics_key, name, model)
  if redis.call('SISMEMBER', drained_key, name) == 1 then return 'drained' end
  local fields = redis.call('HMGET', metrics_key, 'health', 'models')
  if fields[1] == 'down' then return 'down' end
  if ejected(pool_base(drained_key, ':drained'), name) then return 'ejected' end
  local models = fields[2]
  if model ~= '' and models and models ~= '' then
    if not string.find(',' .. models .. ',', ',' .. model .. ',', 1, true) then return 'model' end
  end
  return nil
end

-- The ordered index (docs/redis-keys.md, "Ordered index"): every eligible member
-- (not drained, not down, not ejected) is scored by in-flight / weight in `lr:all` and in either
-- `lr:any` (model list unknown: serves every model) or one `lr:model:<m>` ZSET per
-- model it serves, so "least loaded backend serving M" is O(log n). `lr:placed`
-- records which ZSETs a backend is in, `lr:weights` the members and their weights.
-- Scripts derive these keys from the pool's base `llmlb:{pool}`: every one carries the
-- pool's hash tag, so they share the slot of the keys the script declares (Cluster).
local function index_zsets(base, placement)
  local zsets = {base .. ':lr:all'}
  if placement == '*' then
    zsets[2] = base .. ':lr:any'
  else
    for m in string.gmatch(placement, '[^,]+') do zsets[#zsets + 1] = base .. ':lr:model:' .. m end
  end
  return zsets
end

-- Per index ZSET, the totals of its members (`lr:sum` HASH): `<zset>#n` requests in
-- flight, `<zset>#w` weights in millionths (integers: adding and taking away stays exact).
-- session_affinity's load bound reads them instead of walking the pool.
local function weight_units(weight)
  return math.floor(weight * 1000000 + 0.5)
end

-- Add dn requests and dw weight units to the totals of the ZSETs a backend placed as
-- `placement` is in.
local function index_total_add(base, placement, dn, dw)
  for _, zset in ipairs(index_zsets(base, placement)) do
    if dn ~= 0 then redis.call('HINCRBY', base .. ':lr:sum', zset .. '#n', dn) end
    if dw ~= 0 then redis.call('HINCRBY', base .. ':lr:sum', zset .. '#w', dw) end
  end
end

-- The in-flight count a placed backend is indexed with (its score x weight), 0 if none.
local function index_counted(base, name, weight)
  local score = redis.call('ZSCORE', base .. ':lr:all', name)
  return score and math.floor(tonumber(score) * weight + 0.5) or 0
end

-- Score a placed backend by its current in-flight count (after any change to it). `dn`,
-- when the caller knows it (reserve: +1, release: -1), is how much that count just changed:
-- the backend was indexed with count - dn, since every script that changes a count
-- re-scores it here, so the totals take dn without reading the old score. Without it (a
-- reap's repair, a placement) the old score is read.
local function index_score(base, name, dn)
  local placement = redis.call('HGET', base .. ':lr:placed', name)
  if not placement then return end
  local weight = tonumber(redis.call('HGET', base .. ':lr:weights', name)) or 1
  local count = tonumber(redis.call('HGET', base .. ':inflight', name) or '0')
  if dn == nil then dn = count - index_counted(base, name, weight) end
  index_total_add(base, placement, dn, 0)
  local score = string.format('%.17g', count / weight)
  for _, zset in ipairs(index_zsets(base, placement)) do redis.call('ZADD', zset, score, name) end
end

-- Put a backend where its eligibility says (or take it out): after a drain, a health
-- or model-list change, a membership change. The rule is `ineligible` with no model.
local function index_place(base, name)
  local want = nil
  if redis.call('HEXISTS', base .. ':lr:weights', name) == 1
      and not ineligible(base .. ':drained', base .. ':backend:' .. name, name, '') then
    local models = redis.call('HGET', base .. ':backend:' .. name, 'models')
    want = (models and models ~= '') and models or '*'
  end
  local placed_key = base .. ':lr:placed'
  local had = redis.call('HGET', placed_key, name)
  if had == want then return end
  local weight = tonumber(redis.call('HGET', base .. ':lr:weights', name)) or 1
  if had then
    index_total_add(base, had, -index_counted(base, name, weight), -weight_units(weight))
    for _, zset in ipairs(index_zsets(base, had)) do redis.call('ZREM', zset, name) end
    redis.call('HDEL', placed_key, name)
  end
  if want then
    redis.call('HSET', placed_key, name, want)
    index_total_add(base, want, 0, weight_units(weight))
    index_score(base, name)
  end
end

-- Rebuild the whole index from the members in `lr:weights`, the drained set and the
-- metrics hashes (after a membership change, or to heal drift). O(pool size).
local function index_rebuild(base)
  local placed_key = base .. ':lr:placed'
  local placed = redis.call('HGETALL', placed_key)
  for i = 2, #placed, 2 do
    for _, zset in ipairs(index_zsets(base, placed[i])) do redis.call('DEL', zset) end
  end
  redis.call('DEL', placed_key, base .. ':lr:all', base .. ':lr:any', base .. ':lr:sum')
  local names = redis.call('HKEYS', base .. ':lr:weights')
  for _, name in ipairs(names) do
    if string.sub(name, 1, 1) ~= '#' then index_place(base, name) end
  end
end

-- A backend's outlier record: `outlier` HASH backend -> "streak level kind window_ms probe"
-- (consecutive failed requests, ejections in a row, the last failure's kind, how long
-- a probe may run, the probe's request id or '-'); absent: nothing failed since the
-- last success.
local function outlier_get(base, name)
  local text = redis.call('HGET', base .. ':outlier', name)
  if not text then return nil end
  local streak, level, kind, window, probe = string.match(text, '^(%S+) (%S+) (%S+) (%S+) (.*)$')
  return {streak = tonumber(streak) or 0, level = tonumber(level) or 0, kind = kind or '-',
          window = tonumber(window) or 0, probe = probe or '-'}
end

local function outlier_put(base, name, r)
  redis.call('HSET', base .. ':outlier', name,
             r.streak .. ' ' .. r.level .. ' ' .. r.kind .. ' ' .. r.window .. ' ' .. r.probe)
end

-- Half-open backends (cool-down over, no probe out) go back into the ordered index.
local function outlier_due(base)
  for _, name in ipairs(redis.call('ZRANGEBYSCORE', base .. ':ejected', '-inf', clock(), 'LIMIT', 0, 8)) do
    index_place(base, name)
  end
end

-- A request just reserved on a half-open backend is its probe: no other request goes
-- there until the probe's outcome (release.lua) or until its window passes.
local function claim_probe(base, name, request_id)
  if not redis.call('ZSCORE', base .. ':ejected', name) then return end
  local r = outlier_get(base, name) or {streak = 0, level = 1, kind = '-', window = 30000}
  r.probe = request_id
  outlier_put(base, name, r)
  redis.call('ZADD', base .. ':ejected', clock() + r.window, name)
  index_place(base, name)
end

-- Reserve one in-flight slot on backend for request_id, owned by worker. Idempotent: a
-- request id that already holds a lease gets that lease back (its backend, counted
-- once), whatever backend the caller picked. Returns the in-flight count and the backend.
-- The worker's heartbeat deadline is pushed forward too, so a lease never
-- belongs to a worker the reaper does not know.
local function reserve(inflight_key, leases_key, workers_key, backend, request_id, worker, ttl_ms, now)
  if redis.call('HSETNX', leases_key, request_id, backend .. ' ' .. worker .. ' ' .. now) == 0 then
    local on = string.match(redis.call('HGET', leases_key, request_id), '^(%S+)')
    return tonumber(redis.call('HGET', inflight_key, on) or '0'), on
  end
  redis.call('ZADD', workers_key, 'GT', now + ttl_ms, worker)  -- GT still adds a new member
  local count = redis.call('HINCRBY', inflight_key, backend, 1)
  local base = pool_base(inflight_key, ':inflight')
  index_score(base, backend, 1)
  claim_probe(base, backend, request_id)
  return count, backend
end

-- The two prefix indexes' choice among candidates 1..n (acquire_prefix, acquire_precise).
-- The least load of a pickable candidate, or nil and why none is: 'cap' when an eligible
-- one was refused at the cap, else 'model' when one lacked the model, else 'none'.
local function least_pickable_load(n, pickable, load, saw_eligible, saw_model_miss)
  local min_load
  for i = 1, n do
    if pickable[i] and (min_load == nil or load[i] < min_load) then min_load = load[i] end
  end
  if min_load ~= nil then return min_load end
  if saw_eligible then return nil, 'cap' end
  if saw_model_miss then return nil, 'model' end
  return nil, 'none'
end

-- Bounded load: the longest match (blocks[i], nil for none) of at least min_match among
-- pickable candidates whose load is within bound and whose fresh KV use (kv[i], nil when
-- unknown) is at most max_kv; equal matches: the least loaded. Returns it and its blocks,
-- or nil.
local function bounded_pick(n, pickable, blocks, load, kv, min_match, bound, max_kv)
  local chosen, best_match
  for i = 1, n do
    local b = blocks[i] or 0
    if pickable[i] and b >= min_match and b > 0 and load[i] <= bound and (kv[i] == nil or kv[i] <= max_kv) then
      if best_match == nil or b > best_match or (b == best_match and load[i] < load[chosen]) then
        chosen, best_match = i, b
      end
    end
  end
  return chosen, best_match
end

-- The least loaded pickable candidate, preferring one whose fresh KV use is at most
-- max_kv; equal loads: the lower occupancy[i] when occupancy is given, else the first.
local function least_loaded(n, pickable, load, kv, max_kv, occupancy)
  for pass = 1, 2 do
    local chosen
    for i = 1, n do
      if pickable[i] and (pass == 2 or kv[i] == nil or kv[i] <= max_kv) and (chosen == nil
          or load[i] < load[chosen]
          or (occupancy and load[i] == load[chosen] and occupancy[i] < occupancy[chosen])) then
        chosen = i
      end
    end
    if chosen then return chosen end
  end
  return nil
end

-- Walking the ordered index (prefix_cache's load bound and fallback). ---------------

-- An iterator over the members of `zsets` (one ZSET, or a model's ZSET and lr:any),
-- lowest score first: each call returns name, score (number), score as Redis prints it,
-- or nil at the end. Reads by rank in small batches, so stopping early costs O(log n).
-- The ZSETs must not change while it runs.
local function index_walker(zsets)
  local BATCH = 16
  local bufs, pos, rank = {}, {}, {}
  for z = 1, #zsets do bufs[z], pos[z], rank[z] = {}, 1, 0 end
  local function head(z)
    if pos[z] > #bufs[z] then
      bufs[z] = redis.call('ZRANGE', zsets[z], rank[z], rank[z] + BATCH - 1, 'WITHSCORES')
      pos[z], rank[z] = 1, rank[z] + BATCH
    end
    return bufs[z][pos[z] + 1]
  end
  return function()
    local best, best_score
    for z = 1, #zsets do
      local raw = head(z)
      if raw and (best == nil or tonumber(raw) < best_score) then best, best_score = z, tonumber(raw) end
    end
    if not best then return nil end
    local name, raw = bufs[best][pos[best]], bufs[best][pos[best] + 1]
    pos[best] = pos[best] + 2
    return name, best_score, raw
  end
end

-- The members of `zsets` at score `raw` (as Redis prints it) are numbered 0..total-1
-- across the ZSETs: how many there are, and member `offset`. By rank, not by LIMIT
-- offset: a skip list walks an offset one by one, but finds a rank in O(log n).
local function index_tie_count(zsets, raw)
  local total = 0
  for _, zset in ipairs(zsets) do total = total + redis.call('ZCOUNT', zset, raw, raw) end
  return total
end

local function index_tied_at(zsets, raw, offset)
  for _, zset in ipairs(zsets) do
    local c = redis.call('ZCOUNT', zset, raw, raw)
    if offset < c then
      local rank = redis.call('ZCOUNT', zset, '-inf', '(' .. raw) + offset
      return redis.call('ZRANGE', zset, rank, rank)[1]
    end
    offset = offset - c
  end
end

-- The least-loaded member of `zsets` that usable(name) accepts, uniformly random among
-- ties (math.random, seeded by the caller), or nil; and true when the walk stopped at
-- score_limit (no backend under the cap scores that much). Tied members are probed at
-- random first (O(log n) each, enough when few are unusable), then read as a group.
local function index_least(zsets, usable, score_limit)
  -- The lowest score above `above` (exclusive; nil: the lowest of all), as Redis prints it.
  local function next_score(above)
    local best
    for _, zset in ipairs(zsets) do
      local r
      if above then
        r = redis.call('ZRANGEBYSCORE', zset, '(' .. above, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
      else
        r = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
      end
      if r[2] and (best == nil or tonumber(r[2]) < tonumber(best)) then best = r[2] end
    end
    return best
  end
  local PROBES, SMALL = 8, 16
  local function pick_among(score)
    local total = index_tie_count(zsets, score)
    if total > SMALL then
      for _ = 1, PROBES do
        local name = index_tied_at(zsets, score, math.random(total) - 1)
        if usable(name) then return name end
      end
    end
    local ok = {}
    for _, zset in ipairs(zsets) do
      for _, name in ipairs(redis.call('ZRANGEBYSCORE', zset, score, score)) do
        if usable(name) then ok[#ok + 1] = name end
      end
    end
    if #ok > 0 then return ok[math.random(#ok)] end
  end
  local best
  local score = next_score(nil)
  while score and not best and tonumber(score) < score_limit do
    best = pick_among(score)
    if not best then score = next_score(score) end
  end
  return best, best == nil and score ~= nil and tonumber(score) >= score_limit
end

-- The same numbering for many draws: how many members `zsets` hold at score `raw`, and a
-- function giving member `offset` (one ZRANGE per call; the counts are read once).
local function index_tie_group(zsets, raw)
  local counts, starts, total = {}, {}, 0
  for z, zset in ipairs(zsets) do
    counts[z] = redis.call('ZCOUNT', zset, raw, raw)
    total = total + counts[z]
  end
  local function at(offset)
    for z, zset in ipairs(zsets) do
      if offset < counts[z] then
        starts[z] = starts[z] or redis.call('ZCOUNT', zset, '-inf', '(' .. raw)
        return redis.call('ZRANGE', zset, starts[z] + offset, starts[z] + offset)[1]
      end
      offset = offset - counts[z]
    end
  end
  return total, at
end

-- Is `name` in one of `zsets` at score `raw`?
local function index_has_at(zsets, name, raw)
  for _, zset in ipairs(zsets) do
    local s = redis.call('ZSCORE', zset, name)
    if s and tonumber(s) == tonumber(raw) then return true end
  end
  return false
end

-- The prefix indexes' walks of the ordered index (acquire_prefix, acquire_precise). --
-- R, a decision's reader over the pool: R.read(name) reads a backend once and returns
-- its record {usable, pickable, load, kv, why, ...}, setting R.saw_eligible when the
-- backend is eligible and not excluded; R.info name -> record (the ones read so far);
-- R.zsets the index ZSETs to pick from (the model's and lr:any, or lr:all); R.all_key
-- lr:all; R.model ('' for any); R.score_limit (past it nobody is under the cap);
-- R.base the pool's base key; R.dry (reads only); R.stale (see below).

-- One backend of a prefix decision (acquire_prefix.lua, acquire_precise.lua), read once and
-- kept in R.info: member (of the pool), why (ineligible's reason), status ('ok', that
-- reason, 'excluded' or 'cap': what a dry run shows), usable (may hold or match entries:
-- eligible, maybe at the cap or excluded), pickable (may be picked now), load, waiting and
-- kv (from fresh metrics, else nil), blocks and block_size (the engine's KV cache, as
-- scraped). R carries base, model, now, stale_after, excluded, cap and saw_eligible; KEYS
-- are both scripts': [1] inflight HASH, [4] drained SET, [5] lr:weights HASH (members).
local function prefix_backend(R, name)
  local c = R.info[name]
  if c then return c end
  c = {}
  R.info[name] = c
  local weight = string.sub(name, 1, 1) ~= '#' and redis.call('HGET', KEYS[5], name)
  if not weight then return c end
  c.member = true
  local metrics = R.base .. ':backend:' .. name
  c.why = ineligible(KEYS[4], metrics, name, R.model)
  c.status = c.why or 'ok'
  if c.why then return c end
  c.usable = true
  local f = redis.call('HMGET', metrics, 'scraped_at', 'waiting', 'running', 'kv_usage',
                       'num_gpu_blocks', 'block_size')
  local inflight = tonumber(redis.call('HGET', KEYS[1], name) or '0')
  local queued = 0
  local scraped = tonumber(f[1])
  if scraped and R.now - scraped <= R.stale_after then
    c.waiting = tonumber(f[2])
    queued = (c.waiting or 0) + (tonumber(f[3]) or 0)
    c.kv = tonumber(f[4])
  end
  -- Requests this fleet of proxies sent, or what the engine reports if it has more
  -- (other clients): never both, which would count our own requests twice.
  c.load = math.max(inflight, queued) / tonumber(weight)
  c.blocks, c.block_size = tonumber(f[5]), tonumber(f[6])
  if R.excluded[name] then
    c.status = 'excluded'
  else
    R.saw_eligible = true
    if R.cap == 0 or inflight < R.cap then c.pickable = true else c.status = 'cap' end
  end
  return c
end

-- The least load of a dry run (explain), which read every member: from those rows, the
-- same refusals as index_least_load ('model' when only another model's backends were seen).
local function read_least_load(R, n, pickable, load)
  local saw_model_miss = false
  for _, c in pairs(R.info) do
    if c.why == 'model' then saw_model_miss = true end
  end
  return least_pickable_load(n, pickable, load, R.saw_eligible, saw_model_miss)
end

local function kv_fits(c, max_kv) return c.kv == nil or c.kv <= max_kv end

-- Indexed backends found ineligible on the way were changed behind the index's back (a
-- direct write): re-placed once the walks are done (a walk needs the ZSETs unchanged).
local function reader_indexed(R, name)
  local c = R.read(name)
  if not c.usable then R.stale[name] = true end
  return c
end

local function reader_replace_stale(R)
  if R.dry then return end
  for name in pairs(R.stale) do index_place(R.base, name) end
  R.stale = {}
end

-- The least load of a pickable backend among candidates 1..n (pickable[i], load[i]) and
-- the index, or nil and why none is (least_pickable_load's reasons). From the index: its
-- scores are in-flight / weight and a load is never below its backend's score, so the
-- walk stops at the first score at or above the least load found (at once when the
-- head's engine queue is not longer than its in-flight count).
local function index_least_load(R, n, pickable, load)
  local best
  for i = 1, n do
    if pickable[i] and (best == nil or load[i] < best) then best = load[i] end
  end
  local next_entry = index_walker(R.zsets)
  while true do
    local name, score = next_entry()
    if not name or (best and score >= best) then break end
    if score >= R.score_limit and (best or R.saw_eligible) then break end
    local c = reader_indexed(R, name)
    if c.pickable and (best == nil or c.load < best) then best = c.load end
  end
  if best then return best end
  if R.saw_eligible then return nil, 'cap' end
  reader_replace_stale(R)
  local zsets = R.zsets
  local model_miss = R.model ~= '' and redis.call('ZCARD', R.all_key)
    > redis.call('ZCARD', zsets[1]) + (zsets[2] and redis.call('ZCARD', zsets[2]) or 0)
  for _, c in pairs(R.info) do
    if c.why == 'model' then model_miss = true end
  end
  return nil, model_miss and 'model' or 'none'
end

-- The fallback, from the index: among pickable backends (the candidates `names` and the
-- index), preferring those whose fresh KV use is at most max_kv, the tie group G = those
-- at the least load; with occupancy(name) given, the least of it among a uniformly random
-- sample of min(sample, #G) members (power of k choices: all of G, the exact rule, when G
-- has at most `sample` members), still equal: the first drawn; without, the first drawn,
-- i.e. a uniformly random member of G. The walk stops at the least load's own score: the
-- rest of G is at that score (a load is never below its score), and is drawn from by
-- rank, not read. Draws are without replacement and skip members that do not qualify
-- (rejection: the kept ones are still a uniform sample of G); an occupancy of 0 ends the
-- draw early (nothing drawn later could replace it: the same pick, fewer reads).
local function index_least_loaded(R, names, max_kv, sample, occupancy)
  local info, zsets = R.info, R.zsets
  for pass = 1, 2 do
    local function qualifies(c, best_load)
      return c.pickable and (pass == 2 or kv_fits(c, max_kv)) and c.load == best_load
    end
    local best_load, tied, seen = nil, {}, {}
    local function consider(name)
      local c = info[name]
      if seen[name] or not (c.pickable and (pass == 2 or kv_fits(c, max_kv))) then return end
      seen[name] = true
      if best_load == nil or c.load < best_load then
        best_load, tied = c.load, {name}
      elseif c.load == best_load then
        tied[#tied + 1] = name
      end
    end
    for _, name in ipairs(names) do consider(name) end
    local group_total, group_at = 0, nil
    local next_entry = index_walker(zsets)
    while true do
      local name, score, raw = next_entry()
      if not name or (best_load and score > best_load) or score >= R.score_limit then break end
      if best_load and score == best_load then
        -- The rest of G is at this score: ties found below it, and this score's members.
        local outside = {}
        for _, t in ipairs(tied) do
          if not index_has_at(zsets, t, raw) then outside[#outside + 1] = t end
        end
        tied = outside
        group_total, group_at = index_tie_group(zsets, raw)
        break
      end
      reader_indexed(R, name)
      consider(name)
    end
    if best_load then
      local total, swapped = #tied + group_total, {}
      local chosen, chosen_occ, kept = nil, nil, 0
      for i = 1, total do  -- a partial Fisher-Yates shuffle of 1..total
        local r = math.random(i, total)
        local slot = swapped[r] or r
        swapped[r] = swapped[i] or i
        local name = tied[slot] or group_at(slot - #tied - 1)
        if qualifies(reader_indexed(R, name), best_load) then
          if not occupancy then return name end
          kept = kept + 1
          local o = occupancy(name)
          if chosen == nil or o < chosen_occ then chosen, chosen_occ = name, o end
          if o == 0 or kept == sample then break end
        end
      end
      if chosen then return chosen end
    end
  end
end
