-- Extend this agent's leases (and its traces' key TTLs) while it is still deciding them; a
-- lease deadline of 0 releases them to the other agents at once.
-- ARGV: prefix, lease_deadline, hold_ttl_ms, then trace_id_hex...
local prefix, lease, hold_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local held = {}
for i = 4, #ARGV do held[#held + 1] = ARGV[i] end
local leases = {}
for i = 1, #held, 4000 do
  local scores = redis.call('ZMSCORE', claims, unpack(held, i, math.min(i + 3999, #held)))
  for k = 1, #scores do
    if scores[k] then
      local tid = held[i + k - 1]
      leases[#leases + 1] = lease
      leases[#leases + 1] = tid
      redis.call('PEXPIRE', trace_key(prefix, tid), hold_ttl)
    end
  end
end
if #leases > 0 then in_bulk('ZADD', claims, leases) end
keep_alive(hold_ttl)
return 0
