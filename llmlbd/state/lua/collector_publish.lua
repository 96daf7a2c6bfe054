-- Write one backend's scraped fields, only if the caller still owns the backend.
-- The ownership check and the write are one step, so a collector that lost its
-- lease (paused, partitioned) can never overwrite the new owner's fresher data.
-- KEYS[1] scrape_owners HASH (backend -> "collector_id deadline_ms")
-- KEYS[2] the backend's metrics HASH
-- ARGV[1] collector id   ARGV[2] backend name
-- ARGV[3] age (ms) of the metrics at send time, or '': sets scraped_at = now - age and
--   inflight_at_scrape = the pool's in-flight count of the backend now (the load filters'
--   baseline for "sent or finished since the scrape")
-- ARGV[4] age (ms) of the model list at send time, or '': sets models_at = now - age
-- ARGV[5] n, the number of field/value pairs that follow
-- ARGV[6 .. 5+2n] field, value pairs to set;  ARGV[6+2n ..] fields to delete
-- A change of health or model list moves the backend in the ordered index (_lib.lua), as
-- does the end of its outlier cool-down; a backend whose health goes from down to up is no
-- longer ejected (docs/reliability.md, "Outlier ejection");
-- the pool's metrics_version STRING counts publishes (snapshot_live.lua's watermark).
-- return 1 when written, 0 when the caller is not the owner (nothing written)
local entry = redis.call('HGET', KEYS[1], ARGV[2])
if not entry or string.match(entry, '^(%S+)') ~= ARGV[1] then return 0 end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[5])
local set = {}
for i = 6, 5 + 2 * n do set[#set + 1] = ARGV[i] end
local base = pool_base(KEYS[1], ':scrape_owners')
if ARGV[3] ~= '' then
  set[#set + 1] = 'scraped_at'; set[#set + 1] = tostring(now - tonumber(ARGV[3]))
  set[#set + 1] = 'inflight_at_scrape'
  set[#set + 1] = redis.call('HGET', base .. ':inflight', ARGV[2]) or '0'
end
if ARGV[4] ~= '' then
  set[#set + 1] = 'models_at'; set[#set + 1] = tostring(now - tonumber(ARGV[4]))
end
local was = redis.call('HGET', KEYS[2], 'health')
if #set > 0 then redis.call('HSET', KEYS[2], unpack(set)) end
if #ARGV >= 6 + 2 * n then
  redis.call('HDEL', KEYS[2], unpack(ARGV, 6 + 2 * n))
end
if was == 'down' and redis.call('HGET', KEYS[2], 'health') == 'up' then
  -- Health checks saw it down and back (a restart): its ejection is over too.
  redis.call('ZREM', base .. ':ejected', ARGV[2])
  redis.call('HDEL', base .. ':outlier', ARGV[2])
end
index_place(base, ARGV[2])  -- also brings back a half-open backend (cool-down over)
redis.call('INCR', base .. ':metrics_version')
return 1
