-- Facts records (collector/wire_facts.py) merged inside a buffer script: the same rule as the
-- Python and C merges, or of the bits, sums of span counts and bytes, min of the starts and max
-- of the ends. Lua's numbers are doubles, exact to 2^53 only, and nanosecond timestamps are near
-- 2^61, so each 64-bit field is read as two 32-bit halves, low first, compared and added as such.
local FACTS = '<BBHI4I4I4I4I4I4I4'
local U32 = 4294967296

local function facts_before(alo, ahi, blo, bhi)
  return ahi < bhi or (ahi == bhi and alo < blo)
end

local function merge_facts(a, b)
  local av, abits, _, aspans, ablo, abhi, aslo, ashi, aelo, aehi = struct.unpack(FACTS, a)
  local bv, bbits, _, bspans, bblo, bbhi, bslo, bshi, belo, behi = struct.unpack(FACTS, b)
  if av ~= 1 or bv ~= 1 then error('facts record of another version than 1') end
  local lo = ablo + bblo
  local hi = abhi + bbhi + math.floor(lo / U32)
  lo = lo % U32
  if hi >= U32 then hi, lo = U32 - 1, U32 - 1 end
  local slo, shi = aslo, ashi
  if facts_before(bslo, bshi, aslo, ashi) then slo, shi = bslo, bshi end
  local elo, ehi = aelo, aehi
  if facts_before(aelo, aehi, belo, behi) then elo, ehi = belo, behi end
  return struct.pack(FACTS, 1, bit.bor(abits, bbits), 0, math.min(aspans + bspans, U32 - 1), lo, hi, slo, shi, elo, ehi)
end
