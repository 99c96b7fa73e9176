-- Release a leaked lock: delete it only if it still holds the owner record the janitor read
-- (compare-and-delete), and count it in the lock stats in the same step, so each release is
-- counted once whichever janitor process (CronJob, CLI, API job, operator) did it.
-- The owner's lock set is left to drop_owner.lua, so a dry run (which changes nothing) plans the
-- same owner-set drops as the real run.
-- Invariant: a lock that was released and re-taken (by anyone, even the same owner id after a
-- pid reuse: the record carries a nonce) between the janitor's read and this call is left alone.
-- KEYS[1] lock, KEYS[2] lock stats; ARGV[1] the observed owner record
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[2], 'leaked', 1)
  return 1
end
return 0
