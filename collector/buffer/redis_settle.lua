-- Record decisions for traces this agent claimed, free their spans and return what was
-- appended after the claim (everything past the offset the agent received).
-- ARGV: fence_ms, prefix, kept_ttl_ms, dropped_ttl_ms (0: do not cache),
--       then (trace_id_hex, claimed_length, decision) triples; decision is "1"/"0" + policy.
local stale = refuse_if_stale(ARGV[1])
if stale then return stale end
local prefix, kept_ttl, dropped_ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
local freed = 0  -- bytes of the span keys deleted: one HINCRBY for the call
for i = 5, #ARGV, 3 do
  local tid, offset, decision = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local skey = span_key(prefix, tid)
  local rest = redis.call('GETRANGE', skey, offset, -1)
  out[#out + 1] = rest
  -- the key held offset + #rest bytes, unless it expired and came back shorter: the counters'
  -- usual drift, reset when the shard empties
  if redis.call('DEL', skey) == 1 then freed = freed + offset + #rest end
  redis.call('ZREM', claims, tid)
  remember(prefix, tid, decision, string.sub(decision, 1, 1) == '1' and kept_ttl or dropped_ttl)
end
if freed > 0 then redis.call('HINCRBY', meta, 'tb', -freed) end
return out
