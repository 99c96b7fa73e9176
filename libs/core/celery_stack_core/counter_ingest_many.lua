-- Add many deltas to one live pending hash (the bulk view ingest), in one call.
-- Invariant: as counter_ingest.lua - the "since" stamp exists whenever the live hash does - and
-- the whole call is atomic, so a flush claim sees either none or all of one request's deltas
-- for this shard.
-- KEYS[1] live hash, KEYS[2] live-since key; ARGV[1] now (ms), then id, delta, id, delta, ...
for i = 2, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('SET', KEYS[2], ARGV[1], 'NX')
return (#ARGV - 1) / 2
