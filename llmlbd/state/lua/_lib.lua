-- Shared helpers, prepended to every script by llmlbd/state/scripts.py.
-- Keys used here are always declared by the including script.

-- Redis's own clock in milliseconds: every replica and collector agrees on it.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Why a backend cannot take this request, or nil when it can.
-- metrics_key: the backend's metrics HASH; model: requested model or ''.
local function ineligible(drained_key, metrics_key, name, model)
  if redis.call('SISMEMBER', drained_key, name) == 1 then return 'drained' end
  local fields = redis.call('HMGET', metrics_key, 'health', 'models')
  if fields[1] == 'down' then return 'down' end
  local models = fields[2]
  if model ~= '' and models and models ~= '' then
    if not string.find(',' .. models .. ',', ',' .. model .. ',', 1, true) then return 'model' end
  end
  return nil
end

-- Reserve one in-flight slot on backend for request_id, owned by worker.
-- The worker's heartbeat deadline is pushed forward too, so a lease never
-- belongs to a worker the reaper does not know.
local function reserve(inflight_key, leases_key, workers_key, backend, request_id, worker, ttl_ms, now)
  if redis.call('HSETNX', leases_key, request_id, backend .. ' ' .. worker .. ' ' .. now) == 0 then
    return nil  -- request id already holds a lease: never count it twice
  end
  redis.call('ZADD', workers_key, 'GT', now + ttl_ms, worker)  -- GT still adds a new member
  return redis.call('HINCRBY', inflight_key, backend, 1)
end
