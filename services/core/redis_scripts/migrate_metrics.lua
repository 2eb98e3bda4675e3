-- Add a single Redis's counters to a cluster shard's counters hash, once.
-- KEYS[1]: the migration's progress hash; KEYS[2]: the counters hash (same slot).
-- ARGV[1]: the progress field that marks the merge done; ARGV[2]: its value;
-- then field, count pairs. Returns 1 when added now, 0 when an earlier run did.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
