-- Shared by every buffer script (prepended when the scripts are loaded).
-- One shard's keys: KEYS[1] due (ZSET trace -> decision deadline), KEYS[2] claims (ZSET trace ->
-- lease deadline), KEYS[3] meta (HASH: tb = bytes stored, eb = bytes of traces marked early,
-- each the length of the traces' keys: their facts records and stored fragments);
-- a trace's own key is built from the shard's key prefix, so it shares its hash tag.
-- KEYS[4] is never written: a script declaring a missing key is refused by both nodes while
-- its slot is being migrated (TRYAGAIN, or ASK then TRYAGAIN), so no script reads or writes the
-- trace keys it builds while some of them are still on the old node and some on the new one.
-- A deadline at or below EARLY marks a trace for an early decision: 1 = too big, 2 = overflow.
--
-- A trace's key holds, while it is buffered or being decided, its fragments as they arrived,
-- each after its 40-byte facts record (whose first byte, the format version, is 1 and whose
-- byte count says how long the fragment is); once decided, its verdict ("1"/"0" first) with the
-- decision cache's TTL. One key per trace: appending to it tells a new trace from a decided one.
local SIZE, OVERFLOW, EARLY = 1, 2, 2
local RECORD = 40
local CHAIN = '\1'  -- the first byte of a buffered trace's value
local due, claims, meta = KEYS[1], KEYS[2], KEYS[3]

-- A command that reaches Redis after the agent gave up on it (the server was paused, the
-- network stalled) must not run: the agent has already told its client to retry.
local function refuse_if_stale(fence_ms)
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(fence_ms) then
    return redis.error_reply('STALE the agent gave up waiting for this command')
  end
end

local function trace_key(prefix, tid) return prefix .. 's:' .. tid end

local function mark_early(prefix, tid, kind)
  redis.call('ZADD', due, kind, tid)
  local size = redis.call('STRLEN', trace_key(prefix, tid))
  redis.call('HINCRBY', meta, 'eb', size)
  return size
end

-- A request's trace IDs arrive as one argument: their hex forms, 32 characters each.
local function trace_ids(packed)
  local ids = {}
  for i = 1, #packed, 32 do ids[#ids + 1] = string.sub(packed, i, i + 31) end
  return ids
end

-- One command with many arguments, in slices that Lua's unpack can take.
local function in_bulk(command, key, args)
  for i = 1, #args, 4000 do
    redis.call(command, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end

-- How far this request would take the shard past its bounds, counting what is not already on
-- its way out (traces marked early); a trace whose key exists (buffered, being decided or
-- decided) is not new. Callers only ask whether it is past them, so while every trace counted
-- as new still fits, the per-trace look-ups are skipped and the (then not positive) margin is
-- returned as it is.
local function pressure(prefix, tids, max_traces, max_bytes, incoming)
  local early = redis.call('ZCOUNT', due, '-inf', EARLY)
  local traces = redis.call('ZCARD', due) - early + redis.call('ZCARD', claims)
  local counters = redis.call('HMGET', meta, 'tb', 'eb')
  local over_bytes = tonumber(counters[1] or 0) - tonumber(counters[2] or 0) + incoming - max_bytes
  if traces + #tids <= max_traces then
    return traces + #tids - max_traces, over_bytes, early
  end
  local new = 0
  for _, tid in ipairs(tids) do
    if redis.call('EXISTS', trace_key(prefix, tid)) == 0 then new = new + 1 end
  end
  return traces + new - max_traces, over_bytes, early
end

local function keep_alive(ttl_ms)
  redis.call('PEXPIRE', due, ttl_ms)
  redis.call('PEXPIRE', claims, ttl_ms)
  redis.call('PEXPIRE', meta, ttl_ms)
end
