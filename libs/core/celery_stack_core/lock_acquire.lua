-- Take a lock if it is free. The value is the owner record (owner id + nonce), so only the
-- holder can renew or release it; the owner's lock set and heartbeat let the janitor find
-- locks whose holder died.
-- Invariant: a lock is never taken while another owner's record is in it.
-- KEYS[1] lock, KEYS[2] owner's lock set, KEYS[3] owner's heartbeat
-- ARGV[1] owner record, ARGV[2] ttl (ms), ARGV[3] heartbeat ttl (ms)
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SADD', KEYS[2], KEYS[1])
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
