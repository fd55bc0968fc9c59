-- Hand up to `limit` traces of one shard to the calling agent under a lease: first traces whose
-- lease expired (their agent stopped renewing), then due traces, early ones first.
-- ARGV: fence_ms, prefix, now, lease_deadline, limit, hold_ttl_ms.
-- Returns flat (trace_id_hex, reason, deadline, data) quadruples; reason is size, overflow,
-- deadline or lease; deadline is the decision deadline claimed for, 0 when not a deadline.
local stale = refuse_if_stale(ARGV[1])
if stale then return stale end
local prefix, now, lease, limit, hold_ttl = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {}
local REASONS = {[SIZE] = 'size', [OVERFLOW] = 'overflow'}

local function hand_out(tid, reason, deadline)
  local data = redis.call('GET', span_key(prefix, tid))
  if data then
    redis.call('ZADD', claims, lease, tid)
    redis.call('PEXPIRE', span_key(prefix, tid), hold_ttl)
    out[#out + 1] = tid
    out[#out + 1] = reason
    out[#out + 1] = deadline
    out[#out + 1] = data
  else
    redis.call('ZREM', claims, tid)
  end
  return data
end

for _, tid in ipairs(redis.call('ZRANGE', claims, '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)) do
  hand_out(tid, 'lease', '0')
end
local room = limit - #out / 4
if room > 0 then
  local entries = redis.call('ZRANGE', due, '-inf', now, 'BYSCORE', 'LIMIT', 0, room, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local tid, deadline = entries[i], tonumber(entries[i + 1])
    redis.call('ZREM', due, tid)
    local data = hand_out(tid, REASONS[deadline] or 'deadline', deadline > EARLY and entries[i + 1] or '0')
    if data and deadline <= EARLY then redis.call('HINCRBY', meta, 'eb', -#data) end
  end
end
-- counters drift only when span keys expire under them; an empty shard resets them
if redis.call('ZCARD', due) + redis.call('ZCARD', claims) == 0 then
  redis.call('DEL', meta)
end
keep_alive(hold_ttl)
return out
