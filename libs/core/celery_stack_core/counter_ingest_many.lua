-- Add many deltas to one live pending hash (the bulk view ingest), in one call.
-- Invariant: as counter_ingest.lua - the "since" stamp exists whenever the live hash does - and
-- the whole call is atomic, so a flush claim sees either none or all of one request's deltas
-- for this shard.
-- KEYS[1] live hash, KEYS[2] live-since key; ARGV[1] now (ms), ARGV[2] "id delta id delta ..."
-- (decimal, single spaces): one argument for all ids, so the client packs a string per shard
-- instead of encoding two arguments per id. The fields are the same decimal ids as HINCRBY of
-- a single view writes.
local n = 0
for id, delta in string.gmatch(ARGV[2], '(%d+) (%d+)') do
  redis.call('HINCRBY', KEYS[1], id, delta)
  n = n + 1
end
redis.call('SET', KEYS[2], ARGV[1], 'NX')
return n
