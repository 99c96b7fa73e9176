-- Extend a lock only if it still holds our owner record (compare-and-extend).
-- Invariant: a holder that lost its lock can never extend someone else's.
-- KEYS[1] lock, KEYS[2] owner's heartbeat; ARGV[1] owner record, ARGV[2] ttl (ms), ARGV[3] heartbeat ttl (ms)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
