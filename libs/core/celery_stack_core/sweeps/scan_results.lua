-- One SCAN step over result keys, with the TTL of each key looked at on the server, packed into
-- two strings so the janitor parses three replies per step instead of one per key.
-- Invariant: read-only, and one call is one SCAN step (COUNT bounds its work: a few hundred
-- microseconds), never a KEYS-sized block. Key names containing a newline would break the
-- packing: they are counted as skipped, never returned (so never acted on).
-- (Reads keys it did not get in KEYS: single-Redis only, like the lock scripts.)
-- ARGV[1] cursor, ARGV[2] match pattern, ARGV[3] count
-- Returns {next_cursor, "key\nkey...", "no-ttl key\n...", skipped}
local res = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local all, nottl, skipped = {}, {}, 0
for _, k in ipairs(res[2]) do
  if string.find(k, '\n', 1, true) then
    skipped = skipped + 1
  else
    all[#all + 1] = k
    if redis.call('TTL', k) == -1 then
      nottl[#nottl + 1] = k
    end
  end
end
return {res[1], table.concat(all, '\n'), table.concat(nottl, '\n'), skipped}
