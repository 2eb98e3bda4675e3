-- Publish one outbox row at most once.
-- KEYS[1] sent marker, KEYS[2] stream; ARGV[1] marker TTL (s), ARGV[2] MAXLEN, ARGV[3] body.
-- Optionally KEYS[3] the metrics hash and ARGV[4] the topic, counted when published.
-- The marker outlives any plausible gap between this XADD and the relay's commit,
-- so a relay that dies before committing republishes nothing. The marker is set
-- only after the XADD succeeded: a script is not rolled back when a command
-- fails, so a failed XADD (the stream key of the wrong type, out of memory) must
-- leave nothing behind, and a later relay publishes the row. Checking first and
-- setting last is safe: no other command runs while a script runs.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local entry_id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[3])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
if KEYS[3] and ARGV[4] then redis.call('HINCRBY', KEYS[3], 'envelopes:' .. ARGV[4], 1) end
return entry_id
