-- Take up to N dirty targets for a recount, plus any claimed earlier by a drainer that died.
-- Invariant: a target leaves the dirty set only into the claimed set (with the claim time),
-- and leaves the claimed set only after its recount has committed (the ZREM in recount.py's
-- drain_dirty), so a kill -9 between the two loses no mark.
-- KEYS[1] dirty set, KEYS[2] claimed zset; ARGV[1] n, ARGV[2] now (ms), ARGV[3] stale before (ms)
local out = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[1]))
local room = tonumber(ARGV[1]) - #out
if room > 0 then
  local popped = redis.call('SPOP', KEYS[1], room)
  for _, m in ipairs(popped) do out[#out + 1] = m end
end
for _, m in ipairs(out) do
  redis.call('ZADD', KEYS[2], ARGV[2], m)
end
return out
