-- Read one HSCAN step of an in-flight hash, packed as two comma-joined strings (ids, deltas)
-- that PostgreSQL parses itself (string_to_array(...)::bigint[]): the flusher never turns
-- tens of thousands of fields into Python ints and back.
-- Invariant: read-only; one call is one HSCAN step (COUNT bounds its work), so a large batch
-- never blocks Redis the way HGETALL would. Only values PostgreSQL's bigint cast accepts are
-- packed: an id of 1-19 digits not above 2^63-1, a delta of at most 18 digits with an optional
-- sign. Anything else would fail the whole batch's cast on every retry and wedge the shard;
-- it is counted as invalid instead (and a comma in it could not shift the lists).
-- KEYS[1] in-flight hash; ARGV[1] cursor, ARGV[2] count
-- Returns {next_cursor, "id,id,...", "delta,delta,...", invalid, fields (HLEN; first call only)}
local BIGINT_MAX = '9223372036854775807'
local function valid_id(f)
  if not string.find(f, '^%d+$') then return false end
  return #f < 19 or (#f == 19 and f <= BIGINT_MAX)
end
local function valid_delta(v)
  return string.find(v, '^%-?%d+$') ~= nil and (#v <= 18 or (#v == 19 and string.byte(v) == 45))
end
local res = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local flat = res[2]
local ids, deltas, invalid = {}, {}, 0
for i = 1, #flat, 2 do
  local f, v = flat[i], flat[i + 1]
  if valid_id(f) and valid_delta(v) then
    ids[#ids + 1] = f
    deltas[#deltas + 1] = v
  else
    invalid = invalid + 1
  end
end
local fields = -1
if ARGV[1] == '0' then
  fields = redis.call('HLEN', KEYS[1])
end
return {res[1], table.concat(ids, ','), table.concat(deltas, ','), invalid, fields}
