-- Release a lock only if it still holds our owner record (compare-and-delete).
-- Invariant: a holder whose lock expired and was taken over never deletes the new holder's lock.
-- KEYS[1] lock, KEYS[2] owner's lock set; ARGV[1] owner record
redis.call('SREM', KEYS[2], KEYS[1])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
