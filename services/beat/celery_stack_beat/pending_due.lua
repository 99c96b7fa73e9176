-- The claimed-but-unsent slots the leader of epoch ARGV[1] must resend (fencing).
-- Invariant: only the holder of the current epoch reads (and prunes) the pending set, so a
-- superseded leader never resends; a slot is resent only after a grace since its claim (its
-- claimer is not still sending it) and only within the retry window since its claim.
-- KEYS[1] epoch, KEYS[2] pending zset (task id -> claim time, Redis ms)
-- ARGV[1] caller's epoch, ARGV[2] grace (ms), ARGV[3] retry window (ms)
-- Returns {-1} stale epoch, else {1, {task ids given up (removed)}, {task ids to resend}}.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then
  return {-1}
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local oldest = now - tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. oldest)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. oldest)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], oldest, now - tonumber(ARGV[2]))
return {1, expired, due}
