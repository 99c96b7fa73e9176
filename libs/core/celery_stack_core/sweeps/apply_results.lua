-- Carry out one SCAN step's plan: UNLINK orphaned results ('d') and give a TTL to results
-- without one ('e', EXPIRE ... NX), in one call with one packed reply.
-- Invariant: an UNLINK of a key that vanished, or an EXPIRE NX of a key that got a TTL since the
-- janitor looked, changes nothing and reports '0' (counted as skipped: changed).
-- KEYS the planned keys; ARGV[1] the actions, one character per key; ARGV[2] ttl (seconds)
local out = {}
for i, k in ipairs(KEYS) do
  local op = string.sub(ARGV[1], i, i)
  local done
  if op == 'd' then
    done = redis.call('UNLINK', k)
  else
    done = redis.call('EXPIRE', k, ARGV[2], 'NX')
  end
  out[i] = done == 1 and '1' or '0'
end
return table.concat(out)
