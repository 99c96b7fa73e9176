-- Forget a gone owner's bookkeeping (its lock set and heartbeat), only if none of the locks in
-- its set holds one of its records any more.
-- Invariant: never drops the set of an owner that still holds a lock, so a lock is always
-- findable through its owner while it is held. (The member locks are read by name, not passed in
-- KEYS: they carry the owner set's {locks} hash tag, so they live in its Cluster slot.)
-- KEYS[1] owner's lock set, KEYS[2] owner's heartbeat; ARGV[1] '"owner":"<owner id>"'
for _, lock in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local rec = redis.call('GET', lock)
  if rec and string.find(rec, ARGV[1], 1, true) then
    return 0
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
