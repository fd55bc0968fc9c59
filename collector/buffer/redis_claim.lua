-- Hand up to `limit` traces of one shard to the calling agent under a lease: first traces whose
-- lease expired (their agent stopped renewing), then due traces, early ones first.
-- ARGV: fence_ms, prefix, now, lease_deadline, limit, hold_ttl_ms.
-- Returns {trace IDs (hex, concatenated), one letter per trace: its reason (l lease, d deadline,
-- s size, o overflow), the decision deadlines claimed for (comma-separated; 0 when not a
-- deadline)}. The agent reads the traces' values (their facts records and fragments) with one
-- MGET afterwards: a value of a few kilobytes costs Redis several times more passed through Lua
-- (into a Lua string, then into the script's reply) than sent by MGET.
-- A due trace is handed out unread: its key holds its chain until it is claimed (a key that
-- expired meanwhile reads nil in the agent's MGET, which leaves the claim to its lease). A trace
-- whose lease ran out is checked first (its key's first byte): another agent may have decided
-- it since. The sorted sets change in one command each.
local stale = refuse_if_stale(ARGV[1])
if stale then return stale end
local prefix, now, lease, limit = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local ids, reasons, deadlines = {}, {}, {}
local leases = {}  -- score, member, ...: one ZADD
local REASONS = {[SIZE] = 's', [OVERFLOW] = 'o'}

local function hand_out(tid, reason, deadline)
  ids[#ids + 1] = tid
  reasons[#reasons + 1] = reason
  deadlines[#deadlines + 1] = deadline
  leases[#leases + 1] = lease
  leases[#leases + 1] = tid
end

local lapsed = redis.call('ZRANGE', claims, '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
local gone = {}
for _, tid in ipairs(lapsed) do
  if redis.call('GETRANGE', trace_key(prefix, tid), 0, 0) == CHAIN then
    hand_out(tid, 'l', '0')
  else  -- gone, or decided by another agent
    gone[#gone + 1] = tid
  end
end
if #gone > 0 then in_bulk('ZREM', claims, gone) end
local room = limit - #ids
if room > 0 then
  local entries = redis.call('ZRANGE', due, '-inf', now, 'BYSCORE', 'LIMIT', 0, room, 'WITHSCORES')
  local taken, early_bytes = {}, 0
  for i = 1, #entries, 2 do
    local tid, deadline = entries[i], tonumber(entries[i + 1])
    taken[#taken + 1] = tid
    hand_out(tid, REASONS[deadline] or 'd', deadline > EARLY and entries[i + 1] or '0')
    if deadline <= EARLY then
      early_bytes = early_bytes + redis.call('STRLEN', trace_key(prefix, tid))  -- early ones are few
    end
  end
  if #taken > 0 then in_bulk('ZREM', due, taken) end
  if early_bytes > 0 then redis.call('HINCRBY', meta, 'eb', -early_bytes) end
end
if #leases > 0 then in_bulk('ZADD', claims, leases) end
-- counters drift only when trace keys expire under them; an empty shard resets them
if redis.call('ZCARD', due) + redis.call('ZCARD', claims) == 0 then
  redis.call('DEL', meta)
end
keep_alive(tonumber(ARGV[6]))
return {table.concat(ids), table.concat(reasons), table.concat(deadlines, ',')}
