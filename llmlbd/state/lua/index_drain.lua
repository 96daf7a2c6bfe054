-- Drain or undrain one backend and move it out of (or back into) the ordered index,
-- atomically, so no acquire can pick a backend the drain already answered for.
-- KEYS[1] drained SET   KEYS[2] inflight HASH
-- ARGV[1] backend name   ARGV[2] '1' to drain, '0' to undrain
-- return 1 when the drained set changed, 0 otherwise
local changed
if ARGV[2] == '1' then
  changed = redis.call('SADD', KEYS[1], ARGV[1])
else
  changed = redis.call('SREM', KEYS[1], ARGV[1])
end
index_place(pool_base(KEYS[2], ':inflight'), ARGV[1])
return changed
