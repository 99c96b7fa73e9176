-- Hand the whole live hash to the flusher as an in-flight batch, atomically.
-- Invariant: an increment is always in exactly one of {live, in-flight}; the in-flight hash
-- always has a batch id. If an in-flight batch exists (a flusher crashed), it is returned
-- again unchanged - with its original batch id - instead of claiming a new one, so the ledger
-- in PostgreSQL decides whether it was applied already.
-- Invariant: every new claim increments the generation, so a reader that reads the buffer,
-- then PostgreSQL, then the generation again and sees it unchanged knows that no batch was
-- claimed (hence none committed) between its two reads (celery_stack_api.counting.read_counts).
-- KEYS[1] live, KEYS[2] in-flight, KEYS[3] batch id, KEYS[4] live-since, KEYS[5] in-flight-since,
-- KEYS[6] generation
-- ARGV[1] new batch id
-- Returns {batch_id, "resumed"|"new", since_ms} or false when there is nothing to flush.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {redis.call('GET', KEYS[3]), 'resumed', redis.call('GET', KEYS[5]) or ''}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], ARGV[1])
redis.call('INCR', KEYS[6])
local since = redis.call('GET', KEYS[4])
if since then
  redis.call('RENAME', KEYS[4], KEYS[5])
end
return {ARGV[1], 'new', since or ''}
