-- Broker transport: put back what dead consumers held. A consumer whose last
-- heartbeat is older than ARGV[1] seconds (server clock) is dead; every
-- message it still holds unacked goes back, original bytes, to the right end
-- of the list it came from (the end consumers pop, so it is taken next), and
-- its records go. One atomic step: an ack racing with it either lands first
-- (the message is not put back) or finds nothing to delete.
-- KEYS[1]: the heartbeat index; KEYS[2]: the unacked hash; KEYS[3]: the
--   unacked index; KEYS[4]: the tag -> owner hash (a tag the visibility
--   sweep put back and another consumer took since is that one's, not put
--   back here). The owned hashes are named ARGV[2] .. id: a broker is one
--   Redis, never a cluster, so keys built here are safe.
-- ARGV[1]: seconds of silence that mean dead; ARGV[2]: owned-hash prefix;
-- ARGV[3]: most consumers to handle in one call
-- Returns {consumers handled, messages put back}.
local owners, unacked, index, owner_of = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = redis.call('TIME')
local deadline = tonumber(now[1]) + tonumber(now[2]) / 1e6 - tonumber(ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', owners, '-inf', deadline, 'LIMIT', 0, tonumber(ARGV[3]))
local restored = 0
for _, id in ipairs(dead) do
  local owned = ARGV[2] .. id
  local records = redis.call('HGETALL', owned)
  -- Backwards: a small hash keeps insertion order, so the first fetched ends
  -- nearest the end consumers take from (a large one's order is arbitrary).
  for i = #records - 1, 1, -2 do
    local tag = records[i]
    if string.sub(tag, 1, 1) == '?' then
      -- Held for Python to judge (broker_fetch.lua): list, newline, bytes.
      local source, raw = string.match(records[i + 1], '^([^\n]*)\n(.*)$')
      if source then
        redis.call('RPUSH', source, raw)
        restored = restored + 1
      end
    else
      if redis.call('HGET', owner_of, tag) == id then
        local size, source = string.match(records[i + 1], '^(%d+) (.*)$')
        local entry = redis.call('HGET', unacked, tag)
        if entry and size then
          redis.call('RPUSH', source, string.sub(entry, 2, 1 + tonumber(size)))
          restored = restored + 1
        end
        redis.call('HDEL', unacked, tag)
        redis.call('ZREM', index, tag)
        redis.call('HDEL', owner_of, tag)
      end
    end
  end
  redis.call('DEL', owned)
  redis.call('ZREM', owners, id)
end
return {#dead, restored}
