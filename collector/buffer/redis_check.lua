-- Admission before a request is appended, so that a full shard refuses the request before any
-- shard has taken part of it.
-- ARGV: prefix, max_traces, max_bytes, incoming bytes, trace IDs (hex, concatenated).
-- Returns {traces over the bound, bytes over the bound, traces marked early in the shard}.
local over_traces, over_bytes, early = pressure(ARGV[1], trace_ids(ARGV[5]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
return {over_traces, over_bytes, early}
