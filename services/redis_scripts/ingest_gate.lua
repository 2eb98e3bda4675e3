-- Round trip 1 of a message: dedupe, atomic daily-cap check-and-count, history context.
-- KEYS: bond, marker, history, bond_stream
-- ARGV: user_id, day_start, default_cap, context_limit, marker_ttl, maxlen, now,
--       envelope_id, published_at, guild_id ('' for none), platform, message_id
local bond_key, marker_key, history_key, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local user_id = ARGV[1]
local day_start = tonumber(ARGV[2])
local default_cap = tonumber(ARGV[3])
local context_limit = tonumber(ARGV[4])
local marker_ttl = tonumber(ARGV[5])
local maxlen = tonumber(ARGV[6])
local now = tonumber(ARGV[7])

local function context()
  if context_limit <= 0 then return {} end
  -- Oldest to newest: the detector reads history as a chronology.
  return redis.call('ZRANGE', history_key, -context_limit, -1)
end

local marker = redis.call('GET', marker_key)
if marker == 'done' or marker == 'limited' then
  return {'duplicate', marker}
end
if marker == 'counted' then
  -- Counted by an earlier delivery that died before applying: do not count twice.
  return {'accepted', 'redelivered', context()}
end

local bond = load_bond(bond_key, user_id, default_cap)
if bond.err then return bond end
roll_day(bond, day_start)
local cap = num(bond.daily_msg_cap, 0)
local count = num(bond.daily_msg_count, 0)

if cap > 0 and count >= cap then
  redis.call('SET', bond_key, encode_bond(bond))
  redis.call('SET', marker_key, 'limited', 'EX', marker_ttl)
  local guild = ARGV[10]
  if guild == '' then guild = nil end
  publish(stream, maxlen, {
    schema_version = '1', envelope_id = ARGV[8], topic = 'message.rate_limited',
    published_at = ARGV[9], correlation_id = ARGV[12], meta = {},
    payload = {user_id = user_id, guild_id = guild, platform = ARGV[11],
               message_id = ARGV[12], cap = cap, count = count},
  })
  return {'rate_limited', tostring(cap), tostring(count)}
end

bond.daily_msg_count = count + 1
bond.last_updated = now
redis.call('SET', bond_key, encode_bond(bond))
redis.call('SET', marker_key, 'counted', 'EX', marker_ttl)
return {'accepted', tostring(count + 1), context()}
