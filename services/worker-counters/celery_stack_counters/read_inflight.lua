-- Read one HSCAN step of an in-flight hash, packed as two comma-joined strings (ids, deltas),
-- so the flusher parses three bulk strings per chunk instead of one reply per field and value.
-- Invariant: read-only; one call is one HSCAN step (COUNT bounds its work), so a large batch
-- never blocks Redis the way HGETALL would. Fields or values that are not integers are never
-- packed (a comma in them could shift the lists); they are counted as invalid instead.
-- KEYS[1] in-flight hash; ARGV[1] cursor, ARGV[2] count
-- Returns {next_cursor, "id,id,...", "delta,delta,...", invalid}
local res = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local flat = res[2]
local ids, deltas, invalid = {}, {}, 0
for i = 1, #flat, 2 do
  local f, v = flat[i], flat[i + 1]
  if string.find(f, '^%-?%d+$') and string.find(v, '^%-?%d+$') then
    ids[#ids + 1] = f
    deltas[#deltas + 1] = v
  else
    invalid = invalid + 1
  end
end
return {res[1], table.concat(ids, ','), table.concat(deltas, ','), invalid}
