-- Give a dirty-set claim of a drainer that died back to the dirty set.
-- Invariant: a mark is always in the dirty set or the claimed set (never lost), and a claim
-- that was renewed (a new claim time) after the janitor read it is left to its new drainer.
-- KEYS[1] dirty set, KEYS[2] claimed zset; ARGV[1] member, ARGV[2] observed claim time (ms)
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
