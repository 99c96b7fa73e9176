-- Forget an in-flight batch once PostgreSQL has committed it.
-- Invariant: the in-flight hash is deleted only by the ack of its own batch id, so a late ack
-- from a paused flusher can never delete a batch claimed after it.
-- KEYS[1] in-flight, KEYS[2] batch id, KEYS[3] in-flight-since; ARGV[1] batch id
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3])  -- a big hash is freed off the main thread
  return 1
end
return 0
