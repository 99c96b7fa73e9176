-- One SCAN step over result keys, with each key's absolute expiry (PEXPIRETIME) read on the
-- server and packed into one string, so the janitor parses one reply per step, not one per key.
-- The expiry is the key's version for apply_results.lua: a result re-written after this look
-- gets a new one (Celery writes results with SETEX), and is then left alone.
-- Invariant: read-only, and one call is one SCAN step: COUNT (JANITOR_SCAN_COUNT) bounds its
-- work to well under a millisecond, never a KEYS-sized block. Key names containing a newline
-- would break the packing: they are counted as skipped, never returned (so never acted on).
-- (SCANs one node and reads keys it did not get in KEYS, Celery's, which have no hash tag:
-- single-Redis only, as apply_results.lua; keys.py says so.)
-- ARGV[1] cursor, ARGV[2] match pattern, ARGV[3] count
-- Returns {next_cursor, "key expiry\nkey expiry...", "no-ttl key\n...", skipped, scanned}
-- (expiry: unix ms, or -1 for a key without a TTL)
local res = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local all, nottl, skipped = {}, {}, 0
for _, k in ipairs(res[2]) do
  if string.find(k, '\n', 1, true) then
    skipped = skipped + 1
  else
    local at = redis.call('PEXPIRETIME', k)
    if at ~= -2 then -- -2: expired or deleted since SCAN returned it
      all[#all + 1] = k .. ' ' .. at
      if at == -1 then
        nottl[#nottl + 1] = k
      end
    end
  end
end
return {res[1], table.concat(all, '\n'), table.concat(nottl, '\n'), skipped, #res[2]}
