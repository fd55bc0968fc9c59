-- One agent's periodic exchange with the shared token buckets: report its heartbeat and the
-- tokens it spent since the last exchange, learn every bucket's level and how many agents share it.
-- KEYS: agents (ZSET agent -> last heartbeat ms), then one HASH per bucket (tokens, ts).
-- ARGV: agent_id, liveness_window_ms, ttl_ms, then (rate per second, capacity, spent) triples.
-- Returns {live agents, level of each bucket as a string}. Time is Redis's own clock, so the
-- agents' clocks do not have to agree.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ttl)
local out = {redis.call('ZCARD', KEYS[1])}
for k = 2, #KEYS do
  local i = 4 + (k - 2) * 3
  local rate, capacity, spent = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local state = redis.call('HMGET', KEYS[k], 'tokens', 'ts')
  local tokens, ts = tonumber(state[1]) or capacity, tonumber(state[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate / 1000) - spent
  redis.call('HSET', KEYS[k], 'tokens', tostring(tokens), 'ts', now)
  redis.call('PEXPIRE', KEYS[k], ttl)
  out[#out + 1] = tostring(tokens)
end
return out
