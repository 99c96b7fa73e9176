-- Raise the fencing epoch to a Kubernetes leader's epoch (its Lease's leaseTransitions).
-- Invariant: the epoch only increases, so a leader whose epoch was superseded stays fenced, and
-- no two Lease holders share an epoch (the Lease deleted and recreated between their reads).
-- KEYS[1] epoch; ARGV[1] the new leader's epoch
-- Returns 1 if the epoch is now ARGV[1], 0 if it or a newer one is already current (stale).
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local mine = tonumber(ARGV[1])
if current >= mine then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
