-- Broker transport: a consumer says it is alive, on the server's clock (so
-- workers on machines whose clocks disagree judge each other fairly).
-- KEYS[1]: the consumers' heartbeat index (sorted set: id -> last beat)
-- ARGV[1]: the consumer's id
local now = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(now[1]) + tonumber(now[2]) / 1e6, ARGV[1])
return 1
