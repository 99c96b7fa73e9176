-- Redis election: take the beat lease if it is free and start a new epoch.
-- Invariant: at most one owner record is in the lease at a time, and every acquisition gets an
-- epoch strictly greater than all before it (INCR in the same atomic step).
-- KEYS[1] lease, KEYS[2] epoch; ARGV[1] owner record (JSON), ARGV[2] lease ttl (ms)
-- Returns {epoch, stored record} or {0}.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0}
end
local epoch = redis.call('INCR', KEYS[2])
local record = cjson.decode(ARGV[1])
record['epoch'] = epoch
local value = cjson.encode(record)
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {epoch, value}
