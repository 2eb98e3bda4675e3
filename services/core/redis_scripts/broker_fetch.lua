-- Broker transport (services/core/broker.py): take up to ARGV[1] more messages
-- from the consumer's queue lists and record each as unacked in the same
-- atomic step, so a message is never out of both the queue and the unacked
-- hash (no window in which a killed worker loses it).
-- KEYS: the queue lists in the order to drain them, then the unacked hash and
--   the unacked index (sorted set)
-- ARGV[1]: how many at most; ARGV[2]: the time to index them under (seconds)
-- Returns a flat list: key position (1-based), delivery tag, raw message, ...
-- A message that is not a kombu JSON message with a delivery tag is pushed
-- back where it was, and fetching stops: the stock path takes it next.
local unacked, index = KEYS[#KEYS - 1], KEYS[#KEYS]
local want = tonumber(ARGV[1])
local out = {}
local taken = 0
for k = 1, #KEYS - 2 do
  while taken < want do
    local raw = redis.call('RPOP', KEYS[k])
    if not raw then break end
    local ok, message = pcall(cjson.decode, raw)
    local props = ok and type(message) == 'table' and message.properties
    local tag = type(props) == 'table' and props.delivery_tag
    if type(tag) ~= 'string' then
      redis.call('RPUSH', KEYS[k], raw)
      return out
    end
    local info = type(props.delivery_info) == 'table' and props.delivery_info or {}
    -- What kombu's QoS.append writes: [message, exchange, routing_key], with
    -- the message's own bytes kept as they are.
    redis.call('HSET', unacked, tag, '[' .. raw .. ',' .. cjson.encode(info.exchange or '') .. ','
      .. cjson.encode(info.routing_key or '') .. ']')
    redis.call('ZADD', index, ARGV[2], tag)
    out[#out + 1] = k
    out[#out + 1] = tag
    out[#out + 1] = raw
    taken = taken + 1
  end
  if taken >= want then break end
end
return out
