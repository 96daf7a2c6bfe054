-- Release the in-flight slot of one request and record how the backend did (outlier
-- ejection, docs/reliability.md); a second release is a no-op.
-- KEYS[1] inflight HASH   KEYS[2] leases HASH
-- ARGV[1] request id
-- ARGV[2] outcome: '' (not the backend's doing: nothing recorded), 'ok', or the kind of
--   failure ('connect', 'reset', 'status', 'timeout')
-- ARGV[3] consecutive failures that eject (0: never)   ARGV[4] first cool-down (ms)
-- ARGV[5] longest cool-down (ms)   ARGV[6] how long a probe may run (ms)
-- A failure adds one to the backend's streak; at ARGV[3] it is ejected (`ejected` ZSET,
-- out of the ordered index) for ARGV[4] * 2^(ejections in a row - 1), at most ARGV[5].
-- A success ends the streak. While ejected or half-open only the probe's outcome counts:
-- a success brings the backend back, a failure ejects it again for twice as long.
-- return {1 if a lease was released else 0, event ('' | 'ejected' | 'returned'), backend,
--   cool-down (ms), ejections in a row, failure kind, streak}
local lease = redis.call('HGET', KEYS[2], ARGV[1])
if not lease then return {0, ''} end
redis.call('HDEL', KEYS[2], ARGV[1])
local backend = string.match(lease, '^(%S+)')
local left = redis.call('HINCRBY', KEYS[1], backend, -1)
if left <= 0 then
  redis.call('HDEL', KEYS[1], backend)  -- absent means 0; never leave a negative count
end
local base = pool_base(KEYS[1], ':inflight')
-- Keep the ordered index in step: the count went from max(left + 1, 0) to max(left, 0).
index_score(base, backend, math.max(left, 0) - math.max(left + 1, 0))
local outcome = ARGV[2] or ''
if outcome == '' then return {1, ''} end

local r = outlier_get(base, backend)
if outcome == 'ok' and not r then return {1, ''} end  -- the common case: one HGET
local out = redis.call('ZSCORE', base .. ':ejected', backend)
local probe = r and r.probe == ARGV[1]
if out and not probe then return {1, ''} end  -- ejected: only its probe's outcome counts
if outcome == 'ok' then
  redis.call('HDEL', base .. ':outlier', backend)
  if not out then return {1, ''} end
  redis.call('ZREM', base .. ':ejected', backend)
  index_place(base, backend)
  return {1, 'returned', backend, 0, r.level, r.kind, 0}
end

local threshold = tonumber(ARGV[3]) or 0
if threshold <= 0 then return {1, ''} end
r = r or {streak = 0, level = 0, kind = '-', window = 0, probe = '-'}
r.streak, r.kind = r.streak + 1, outcome
if not out and r.streak < threshold then
  outlier_put(base, backend, r)
  return {1, '', backend, 0, r.level, outcome, r.streak}
end
local streak = r.streak
r.level = r.level + 1
local cool = math.min(tonumber(ARGV[4]) * 2 ^ math.min(r.level - 1, 30), tonumber(ARGV[5]))
cool = math.floor(cool)
r.streak, r.window, r.probe = 0, tonumber(ARGV[6]), '-'
outlier_put(base, backend, r)
redis.call('ZADD', base .. ':ejected', clock() + cool, backend)
index_place(base, backend)
return {1, 'ejected', backend, cool, r.level, outcome, streak}
