-- Extend this agent's leases (and its traces' key TTLs) while it is still deciding them; a
-- lease deadline of 0 releases them to the other agents at once.
-- ARGV: prefix, lease_deadline, hold_ttl_ms, then trace_id_hex...
local prefix, lease, hold_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 4, #ARGV do
  if redis.call('ZSCORE', claims, ARGV[i]) then
    redis.call('ZADD', claims, lease, ARGV[i])
    redis.call('PEXPIRE', span_key(prefix, ARGV[i]), hold_ttl)
  end
end
keep_alive(hold_ttl)
return 0
