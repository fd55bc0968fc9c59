-- Shared by every buffer script (prepended when the scripts are loaded).
-- One shard's keys: KEYS[1] due (ZSET trace -> decision deadline), KEYS[2] claims (ZSET trace ->
-- lease deadline), KEYS[3] meta (HASH: tb = bytes stored, eb = bytes of traces marked early);
-- span and decision keys are built from the shard's key prefix, so they share its hash tag.
-- KEYS[4] is never written: a script declaring a missing key is refused by both nodes while
-- its slot is being migrated (TRYAGAIN, or ASK then TRYAGAIN), so no script reads or writes the
-- span and decision keys it builds while some of them are still on the old node and some on
-- the new one.
-- A deadline at or below EARLY marks a trace for an early decision: 1 = too big, 2 = overflow.
local SIZE, OVERFLOW, EARLY = 1, 2, 2
local due, claims, meta = KEYS[1], KEYS[2], KEYS[3]

-- A command that reaches Redis after the agent gave up on it (the server was paused, the
-- network stalled) must not run: the agent has already told its client to retry.
local function refuse_if_stale(fence_ms)
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(fence_ms) then
    return redis.error_reply('STALE the agent gave up waiting for this command')
  end
end

local function span_key(prefix, tid) return prefix .. 's:' .. tid end
local function decision_key(prefix, tid) return prefix .. 'd:' .. tid end

-- A trace's decision, for its late spans; a TTL of 0 means that kind of decision is not cached.
local function remember(prefix, tid, decision, ttl_ms)
  if ttl_ms > 0 then
    redis.call('SET', decision_key(prefix, tid), decision, 'PX', ttl_ms)
  end
end

local function mark_early(prefix, tid, kind)
  redis.call('ZADD', due, kind, tid)
  local size = redis.call('STRLEN', span_key(prefix, tid))
  redis.call('HINCRBY', meta, 'eb', size)
  return size
end

-- A request's trace IDs arrive as one argument: their hex forms, 32 characters each.
local function trace_ids(packed)
  local ids = {}
  for i = 1, #packed, 32 do ids[#ids + 1] = string.sub(packed, i, i + 31) end
  return ids
end

-- How far this request would take the shard past its bounds, counting what is not already on
-- its way out (traces marked early); traces already decided or buffered are not new. Callers
-- only ask whether it is past them, so while every trace counted as new still fits, the
-- per-trace look-ups are skipped and the (then not positive) margin is returned as it is.
local function pressure(prefix, tids, max_traces, max_bytes, incoming)
  local early = redis.call('ZCOUNT', due, '-inf', EARLY)
  local traces = redis.call('ZCARD', due) - early + redis.call('ZCARD', claims)
  local bytes = tonumber(redis.call('HGET', meta, 'tb') or 0) - tonumber(redis.call('HGET', meta, 'eb') or 0)
  local over_bytes = bytes + incoming - max_bytes
  if traces + #tids <= max_traces then
    return traces + #tids - max_traces, over_bytes, early
  end
  local new = 0
  for _, tid in ipairs(tids) do
    if not redis.call('ZSCORE', due, tid) and not redis.call('ZSCORE', claims, tid)
        and redis.call('EXISTS', decision_key(prefix, tid)) == 0 then
      new = new + 1
    end
  end
  return traces + new - max_traces, over_bytes, early
end

local function keep_alive(ttl_ms)
  redis.call('PEXPIRE', due, ttl_ms)
  redis.call('PEXPIRE', claims, ttl_ms)
  redis.call('PEXPIRE', meta, ttl_ms)
end
