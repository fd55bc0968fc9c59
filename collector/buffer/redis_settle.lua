-- Record decisions for traces this agent claimed, in the traces' own keys, and return what was
-- appended after the claim (everything past the length the agent received).
-- ARGV: fence_ms, prefix, kept_ttl_ms, dropped_ttl_ms (0: do not cache), trace IDs (hex,
--       concatenated), the claimed lengths (comma-separated), each trace's decision as an
--       index into what follows (comma-separated), then the decisions ("1"/"0" + policy).
-- Returns {position of a trace (1-based), what was appended to it after the claim, ...} for the
-- traces that have such spans. A trace's key is compared by its length, and by its first byte
-- only when it grew; only what followed the claim is read: the claimed chain, kilobytes, never
-- passes through Lua. The claims change in one ZREM.
local stale = refuse_if_stale(ARGV[1])
if stale then return stale end
local prefix, kept_ttl, dropped_ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local tids = trace_ids(ARGV[5])
local offsets, choices = {}, {}
for n in string.gmatch(ARGV[6], '%d+') do offsets[#offsets + 1] = tonumber(n) end
for n in string.gmatch(ARGV[7], '%d+') do choices[#choices + 1] = tonumber(n) end
local out = {}
local freed = 0  -- bytes of the keys dropped: one HINCRBY for the call
for i, tid in ipairs(tids) do
  local key, decision = trace_key(prefix, tid), ARGV[8 + choices[i]]
  local ttl = string.sub(decision, 1, 1) == '1' and kept_ttl or dropped_ttl
  -- the key holds the fragments claimed and what followed, unless it expired (the counters'
  -- usual drift, reset when the shard empties) or another agent decided it after our lease. A
  -- key of the claimed length is taken for the claim: a verdict that long (a policy name of
  -- some 70 characters) would only make the byte counters drift the same way
  local length = redis.call('STRLEN', key)
  if length == offsets[i] or (length > offsets[i] and redis.call('GETRANGE', key, 0, 0) == CHAIN) then
    freed = freed + length
    if length > offsets[i] then
      local rest = redis.call('GETRANGE', key, offsets[i], -1)
      out[#out + 1] = i
      out[#out + 1] = rest
    end
  end
  if ttl > 0 then
    redis.call('SET', key, decision, 'PX', ttl)
  else
    redis.call('DEL', key)
  end
end
in_bulk('ZREM', claims, tids)
if freed > 0 then redis.call('HINCRBY', meta, 'tb', -freed) end
return out
