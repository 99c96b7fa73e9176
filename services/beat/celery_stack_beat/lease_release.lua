-- Delete a key only if it still holds our record (compare-and-delete): the beat lease on
-- SIGTERM, and the informational leader record. With a channel, announce the release so
-- standbys try at once instead of at their next retry.
-- Invariant: a replica never deletes a lease or record another replica wrote.
-- KEYS[1] key; ARGV[1] our record, ARGV[2] channel or "". Returns 1 deleted, 0 not ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' then
    redis.call('PUBLISH', ARGV[2], 'released')
  end
  return 1
end
return 0
