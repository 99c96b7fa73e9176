-- Add a delta to one id in a live pending hash and remember when the hash got its first
-- unflushed increment (flush lag = now - that time).
-- Invariant: the "since" stamp exists whenever the live hash does, so lag is never under-reported.
-- KEYS[1] live hash, KEYS[2] live-since key; ARGV[1] id, ARGV[2] delta, ARGV[3] now (ms)
local v = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'NX')
return v
