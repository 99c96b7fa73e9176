-- Claim one schedule slot for the leader of epoch ARGV[1] (fencing).
-- Invariant: a slot is claimed at most once, only by the holder of the current epoch, and only
-- if it is newer than the entry's last claimed slot; so two leaders never both claim a slot,
-- and a paused ex-leader (its epoch superseded) claims nothing. A slot claimed for sending is
-- also recorded as pending (in the same step) until it is sent, so no crash or leader change
-- between claim and send can lose it: the current leader resends it (pending_due.lua).
-- KEYS[1] epoch, KEYS[2] slot key, KEYS[3] last-run hash, KEYS[4] pending zset
-- ARGV[1] caller's epoch, ARGV[2] entry, ARGV[3] due (ms), ARGV[4] slot ttl (ms),
-- ARGV[5] slot record, ARGV[6] mode: "send" | "skip" (claim without sending) | "init",
-- ARGV[7] the slot's task id
-- Returns 1 claimed, 0 already claimed (duplicate), -1 stale epoch.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then
  return -1
end
local last = redis.call('HGET', KEYS[3], ARGV[2])
if ARGV[6] == 'init' then
  -- First leadership for this entry: history starts at this slot (nothing earlier is due).
  if last then return 0 end
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
  return 1
end
if last and tonumber(ARGV[3]) <= tonumber(last) then
  return 0
end
if not redis.call('SET', KEYS[2], ARGV[5], 'NX', 'PX', ARGV[4]) then
  return 0
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
if ARGV[6] == 'send' then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[4], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[7])
end
return 1
