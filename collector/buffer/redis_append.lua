-- Buffer one request's fragments for one shard.
-- ARGV: fence_ms, prefix, now, wait, wait_after_root, max_traces, max_bytes, max_trace_bytes,
--       evict (1: decide the oldest early when full), hold_ttl_ms, then the fragments packed
--       into four arguments (one argument per trace each would cost the client more than the
--       work): trace IDs (hex, concatenated), root flags ("1"/"0" per trace), fragment sizes
--       (comma-separated), fragments (concatenated); then overload relief: one letter per trace
--       ("" when relief is off): k (keep), e (keep: the fragment holds an error span) or d (drop),
--       the three decisions those letters stand for, and the kept and dropped decision TTLs.
-- Returns {traces marked early now, traces marked early in the shard, then per trace: 0 when
-- buffered, 1 when decided now by relief, 2 when a trace relief had dropped is kept from now on
-- (an error span), or the cached decision ("1"/"0" followed by the policy name)}.
local stale = refuse_if_stale(ARGV[1])
if stale then return stale end
local prefix, now, wait, after_root = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local max_trace_bytes, hold_ttl = tonumber(ARGV[8]), tonumber(ARGV[10])
local tids, roots, packed = trace_ids(ARGV[11]), ARGV[12], ARGV[14]
local relief, relief_decisions = ARGV[15], {k = ARGV[16], e = ARGV[17], d = ARGV[18]}
local kept_ttl, dropped_ttl = tonumber(ARGV[19]), tonumber(ARGV[20])
local datas, at = {}, 1
for size in string.gmatch(ARGV[13], '%d+') do
  size = tonumber(size)
  datas[#datas + 1] = string.sub(packed, at, at + size - 1)
  at = at + size
end
local marked = 0

if ARGV[9] == '1' then
  -- under relief no new trace is buffered: only the traces already here count (bytes are
  -- counted whole, which errs on the side of room)
  local counted = relief ~= '' and {} or tids
  local over_traces, over_bytes = pressure(prefix, counted, tonumber(ARGV[6]), tonumber(ARGV[7]), #packed)
  while over_traces > 0 or over_bytes > 0 do
    local oldest = redis.call('ZRANGE', due, '(' .. EARLY, '+inf', 'BYSCORE', 'LIMIT', 0, 1)[1]
    if not oldest then break end
    over_bytes = over_bytes - mark_early(prefix, oldest, OVERFLOW)
    over_traces = over_traces - 1
    marked = marked + 1
  end
end

local out = {0, 0}
local stored, stored_early = 0, 0  -- bytes added, and of those to traces marked early: one HINCRBY each
for i, tid in ipairs(tids) do
  local root, data = string.sub(roots, i, i) == '1' and after_root > 0, datas[i]
  local decided = redis.call('GET', decision_key(prefix, tid))
  local letter = relief ~= '' and string.sub(relief, i, i) or nil
  if decided and letter == 'e' and decided == relief_decisions.d then
    remember(prefix, tid, relief_decisions.e, kept_ttl)
    out[#out + 1] = 2
  elseif decided then
    out[#out + 1] = decided
  elseif letter and not redis.call('ZSCORE', due, tid) and not redis.call('ZSCORE', claims, tid) then
    remember(prefix, tid, relief_decisions[letter], letter == 'd' and dropped_ttl or kept_ttl)
    out[#out + 1] = 1
  else
    local skey = span_key(prefix, tid)
    local size = redis.call('APPEND', skey, data)
    redis.call('PEXPIRE', skey, hold_ttl)
    stored = stored + #data
    local deadline = redis.call('ZSCORE', due, tid)
    if deadline then
      deadline = tonumber(deadline)
      if deadline <= EARLY then
        stored_early = stored_early + #data
      elseif max_trace_bytes > 0 and size > max_trace_bytes then
        mark_early(prefix, tid, SIZE)
        marked = marked + 1
      elseif root and now + after_root < deadline then
        redis.call('ZADD', due, now + after_root, tid)
      end
    elseif not redis.call('ZSCORE', claims, tid) then
      deadline = now + wait
      if root and now + after_root < deadline then deadline = now + after_root end
      redis.call('ZADD', due, deadline, tid)
      if max_trace_bytes > 0 and size > max_trace_bytes then
        mark_early(prefix, tid, SIZE)
        marked = marked + 1
      end
    end
    out[#out + 1] = 0
  end
end
if stored > 0 then redis.call('HINCRBY', meta, 'tb', stored) end
if stored_early > 0 then redis.call('HINCRBY', meta, 'eb', stored_early) end
keep_alive(hold_ttl)
out[1] = marked
out[2] = redis.call('ZCOUNT', due, '-inf', EARLY)
return out
