-- Carry out part of one SCAN step's plan: UNLINK orphaned results ('d') and give a TTL to
-- results without one ('e', EXPIRE ... NX), in one call with one packed reply.
-- Invariant (compare-before-delete): a key is unlinked only while its PEXPIRETIME still equals
-- the one scan_results.lua read, so a result re-written since (new expiry) or already gone
-- stays as it is; an EXPIRE NX of a key that got a TTL since changes nothing. Both report '0'
-- (counted as skipped: changed). The caller sends at most JANITOR_SCAN_COUNT keys per call.
-- KEYS the planned keys; ARGV[1] the actions, one character per key; ARGV[2] ttl (seconds);
-- ARGV[2 + i] the expiry read for KEYS[i] (unix ms or -1; ignored for 'e')
local out = {}
for i, k in ipairs(KEYS) do
  local op = string.sub(ARGV[1], i, i)
  local done = 0
  if op == 'd' then
    if tostring(redis.call('PEXPIRETIME', k)) == ARGV[2 + i] then
      done = redis.call('UNLINK', k)
    end
  else
    done = redis.call('EXPIRE', k, ARGV[2], 'NX')
  end
  out[i] = done == 1 and '1' or '0'
end
return table.concat(out)
