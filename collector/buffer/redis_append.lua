-- Buffer one request's fragments for one shard.
-- ARGV: fence_ms, prefix, now, wait, wait_after_root, max_traces, max_bytes, max_trace_bytes,
--       evict (1: decide the oldest early when full), hold_ttl_ms, the trace IDs (hex,
--       concatenated), then overload relief: one letter per trace ("" when relief is off):
--       k (keep), e (keep: the fragment holds an error span) or d (drop), the three decisions
--       those letters stand for, and the kept and dropped decision TTLs; the shard's resource
--       hash of this period (``r:<period>``), the number of arguments that follow for it, and
--       those arguments: each resource the fragments refer to, as its digest then its fields;
--       then each trace's facts record and stored fragment (``wire.chain``: its resources by
--       digest), one argument per trace, in the trace IDs' order (the record's byte count says
--       how long the stored fragment is, its bits whether it holds a root). Every string that
--       enters Lua is copied and hashed whole: an argument per trace is stored by SET or APPEND
--       as it came, where one argument for the whole request was hashed once as a whole and once
--       more for each fragment cut out of it.
-- Returns {traces marked early now, traces marked early in the shard, one letter per trace:
-- 0 buffered, 1 decided now by relief, 2 a trace relief had dropped is kept from now on (an
-- error span), v decided before; then the decisions of the traces decided before, in order
-- ("1"/"0" followed by the policy name)}.
--
-- A new trace costs one command (SET NX: it did not exist), its deadline one place in one ZADD
-- for the whole request; a trace buffered before costs a GETRANGE and an APPEND.
local stale = refuse_if_stale(ARGV[1])
if stale then return stale end
local prefix, now, wait, after_root = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local max_trace_bytes, hold_ttl = tonumber(ARGV[8]), tonumber(ARGV[10])
local tids = trace_ids(ARGV[11])
local relief, relief_decisions = ARGV[12], {k = ARGV[13], e = ARGV[14], d = ARGV[15]}
local kept_ttl, dropped_ttl = tonumber(ARGV[16]), tonumber(ARGV[17])
local resources, referred = ARGV[18], tonumber(ARGV[19])
local FIRST = 19 + referred  -- ARGV[FIRST + i]: trace i's record and stored fragment
local marked = 0
local early = nil  -- traces marked early in the shard, when known: else every append looks its trace up

if ARGV[9] == '1' then
  -- under relief no new trace is buffered: only the traces already here count (bytes are
  -- counted whole, which errs on the side of room)
  local counted = relief ~= '' and {} or tids
  local incoming = 0
  for i = 1, #tids do incoming = incoming + #ARGV[FIRST + i] end
  local over_traces, over_bytes
  over_traces, over_bytes, early = pressure(prefix, counted, tonumber(ARGV[6]), tonumber(ARGV[7]), incoming)
  while over_traces > 0 or over_bytes > 0 do
    local oldest = redis.call('ZRANGE', due, '(' .. EARLY, '+inf', 'BYSCORE', 'LIMIT', 0, 1)[1]
    if not oldest then break end
    over_bytes = over_bytes - mark_early(prefix, oldest, OVERFLOW)
    over_traces = over_traces - 1
    marked = marked + 1
    early = early + 1
  end
end

-- a resource hash lives three periods past its last write: longer than any trace that refers to it
if referred > 0 then
  for i = 20, 19 + referred, 4000 do  -- pairs stay whole: 4000 is even
    redis.call('HSET', resources, unpack(ARGV, i, math.min(i + 3999, 19 + referred)))
  end
  redis.call('PEXPIRE', resources, 3 * hold_ttl)
end

local statuses, decisions = {}, {}
local deadlines = {}  -- score, member, ... of the new traces: one ZADD
local stored, stored_early = 0, 0  -- bytes added, and of those to traces marked early: one HINCRBY each

-- A fragment of a trace whose key exists: appended while the trace is buffered or being
-- decided, answered with the decision once it is decided.
local function append_more(key, tid, data, size, root)
  if redis.call('GETRANGE', key, 0, 0) ~= CHAIN then
    return redis.call('GET', key)
  end
  -- the trace's length with its records, which the bound counts too (40 bytes per fragment)
  local length = redis.call('APPEND', key, data)
  stored = stored + size
  if root or max_trace_bytes > 0 or early ~= 0 then
    local deadline = redis.call('ZSCORE', due, tid)
    if deadline then  -- not being decided
      deadline = tonumber(deadline)
      if deadline <= EARLY then
        stored_early = stored_early + size
      elseif max_trace_bytes > 0 and length > max_trace_bytes then
        mark_early(prefix, tid, SIZE)
        marked = marked + 1
      elseif root and now + after_root < deadline then
        redis.call('ZADD', due, now + after_root, tid)
      end
    end
  end
  return nil
end

for i, tid in ipairs(tids) do
  local data = ARGV[FIRST + i]
  local size = #data  -- what the key grows by: the counters count the keys' lengths
  local root = after_root > 0 and string.byte(data, 2) % 2 == 1
  local key = trace_key(prefix, tid)
  local letter = relief ~= '' and string.sub(relief, i, i) or nil
  local status, decided = '0', nil
  if letter then  -- relief: a trace neither buffered nor decided is decided now, not buffered
    local ttl = letter == 'd' and dropped_ttl or kept_ttl
    local taken
    if ttl > 0 then
      taken = redis.call('SET', key, relief_decisions[letter], 'NX', 'PX', ttl)
    else
      taken = redis.call('EXISTS', key) == 0
    end
    if taken then
      status = '1'
    else
      decided = append_more(key, tid, data, size, root)
      if decided and letter == 'e' and decided == relief_decisions.d then
        if kept_ttl > 0 then redis.call('SET', key, relief_decisions.e, 'PX', kept_ttl) end
        status, decided = '2', nil
      end
    end
  elseif redis.call('SET', key, data, 'NX', 'PX', hold_ttl) then
    stored = stored + size
    local deadline = now + wait
    if root and now + after_root < deadline then deadline = now + after_root end
    if max_trace_bytes > 0 and size > max_trace_bytes then
      deadline = SIZE
      stored_early = stored_early + size
      marked = marked + 1
    end
    deadlines[#deadlines + 1] = deadline
    deadlines[#deadlines + 1] = tid
  else
    decided = append_more(key, tid, data, size, root)
  end
  if decided then
    status = 'v'
    decisions[#decisions + 1] = decided
  end
  statuses[i] = status
end
if #deadlines > 0 then in_bulk('ZADD', due, deadlines) end
if stored > 0 then redis.call('HINCRBY', meta, 'tb', stored) end
if stored_early > 0 then redis.call('HINCRBY', meta, 'eb', stored_early) end
keep_alive(hold_ttl)
return {marked, redis.call('ZCOUNT', due, '-inf', EARLY), table.concat(statuses), decisions}
