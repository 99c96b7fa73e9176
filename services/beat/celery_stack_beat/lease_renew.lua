-- Extend the beat lease only if it still holds our owner record (compare-and-extend).
-- Invariant: a leader whose lease expired (and may have been taken) never extends another's.
-- KEYS[1] lease; ARGV[1] our record, ARGV[2] ttl (ms). Returns 1 extended, 0 lost.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
