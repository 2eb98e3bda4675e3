-- Broker transport (worker/broker.py): take up to ARGV[1] messages
-- from the consumer's queue lists and record each as unacked, and as owned by
-- the consumer ARGV[3], in the same atomic step. A message is never out of
-- both the queue and the unacked hash, so no moment exists at which a killed
-- worker holds the only copy (kombu's BRPOP has that moment: kombu #305).
-- KEYS: the queue lists in the order to drain them, then the unacked hash,
--   the unacked index (sorted set), the consumer's owned hash, the
--   consumers' heartbeat index (sorted set), the unreadable list and the
--   tag -> owner hash (which consumer holds each tag now)
-- ARGV[1]: how many at most; ARGV[2]: the time to index them under (seconds,
--   kombu's clock for the visibility timeout); ARGV[3]: the consumer's id
-- Returns a flat list: key position (1-based), delivery tag, raw message, ...
-- JSON that is not a kombu message with a delivery tag is moved to the
-- unreadable list, as a JSON header (its queue list, the reason), a newline
-- and its bytes: kept for an operator, never delivered. What cjson cannot
-- decode at all is held for Python to judge (below).
local n = #KEYS
local unacked, index, owned, owners, unreadable, owner_of =
  KEYS[n - 5], KEYS[n - 4], KEYS[n - 3], KEYS[n - 2], KEYS[n - 1], KEYS[n]
local want = tonumber(ARGV[1])
local out = {}
local taken = 0
-- Fetching is a sign of life too (the heartbeat thread is the other one).
local now = redis.call('TIME')
redis.call('ZADD', owners, tonumber(now[1]) + tonumber(now[2]) / 1e6, ARGV[3])
for k = 1, n - 6 do
  while taken < want do
    local raw = redis.call('RPOP', KEYS[k])
    if not raw then break end
    local ok, message = pcall(cjson.decode, raw)
    local props = ok and type(message) == 'table' and message.properties
    local tag = type(props) == 'table' and props.delivery_tag
    if not ok then
      -- JSON cjson refuses (a lone surrogate escape, deep nesting) may still be
      -- a message Python reads: held under a provisional field of the owned
      -- hash with its list and bytes, for Python to record or set aside (and
      -- for broker_orphans.lua to put back if this consumer dies first).
      local field = '?' .. now[1] .. '.' .. now[2] .. ':' .. taken
      redis.call('HSET', owned, field, KEYS[k] .. '\n' .. raw)
      out[#out + 1] = k
      out[#out + 1] = field
      out[#out + 1] = raw
      taken = taken + 1
    elseif type(tag) ~= 'string' or tag == ''
        or (type(props.delivery_info) == 'table'
          and ((props.delivery_info.exchange ~= nil and type(props.delivery_info.exchange) ~= 'string')
            or (props.delivery_info.routing_key ~= nil
              and type(props.delivery_info.routing_key) ~= 'string'))) then
      -- Nothing below may fail once a message is popped: what it would fail on
      -- (no tag, a delivery_info that is not strings) is set aside here.
      local reason = 'no properties.delivery_tag'
      if type(tag) == 'string' and tag ~= '' then reason = 'delivery_info not strings' end
      redis.call('LPUSH', unreadable, cjson.encode({queue = KEYS[k], reason = reason}) .. '\n' .. raw)
      out[#out + 1] = k
      out[#out + 1] = ''
      out[#out + 1] = reason
      -- Counted, so a flood of them costs no more per call than messages do.
      taken = taken + 1
    else
      local info = type(props.delivery_info) == 'table' and props.delivery_info or {}
      -- What kombu's QoS.append writes: [message, exchange, routing_key], with
      -- the message's own bytes kept as they are.
      redis.call('HSET', unacked, tag, '[' .. raw .. ',' .. cjson.encode(info.exchange or '')
        .. ',' .. cjson.encode(info.routing_key or '') .. ']')
      redis.call('ZADD', index, ARGV[2], tag)
      -- Where it came from and its length, so broker_orphans.lua can put the
      -- original bytes back on the same list without decoding them.
      redis.call('HSET', owned, tag, #raw .. ' ' .. KEYS[k])
      redis.call('HSET', owner_of, tag, ARGV[3])
      out[#out + 1] = k
      out[#out + 1] = tag
      out[#out + 1] = raw
      taken = taken + 1
    end
  end
  if taken >= want then break end
end
return out
