-- Shared helpers, prepended to every bond script by services/scripts.py.
-- Bonds are stored as the seed ledger wrote them: one JSON object at abl:{user_id}.

local function load_bond(key, user_id, default_cap)
  local raw = redis.call('GET', key)
  if raw then
    local ok, bond = pcall(cjson.decode, raw)
    if ok and type(bond) == 'table' then
      if type(bond.notes) ~= 'table' then bond.notes = {} end
      if type(bond.peak_nodes) ~= 'table' then bond.peak_nodes = {} end
      return bond, true
    end
    return redis.error_reply('CORRUPT_BOND ' .. key)
  end
  return {
    user_id = user_id, phase = 'dormant', prev_phase = 'dormant', archetype = 'unknown',
    phase_entered_at = 0, turn_count = 0, peak_nodes = {}, risk_level = 'low',
    daily_msg_cap = default_cap, daily_msg_count = 0, daily_msg_reset_at = 0,
    egg_status = 'none', notes = {}, last_updated = 0,
  }, false
end

-- cjson cannot tell an empty array from an empty object; the seed wrote notes as
-- a list and peak_nodes as an object, so encode those two by name.
local function encode_bond(bond)
  local parts = {}
  for k, v in pairs(bond) do
    local enc
    if k == 'notes' and type(v) == 'table' and next(v) == nil then
      enc = '[]'
    elseif k == 'peak_nodes' and type(v) == 'table' and next(v) == nil then
      enc = '{}'
    else
      enc = cjson.encode(v)
    end
    parts[#parts + 1] = cjson.encode(tostring(k)) .. ':' .. enc
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

local function num(v, default)
  local n = tonumber(v)
  if n == nil then return default end
  return n
end

-- Count resets at 00:00 UTC: day_start is the current UTC day's midnight.
local function roll_day(bond, day_start)
  if num(bond.daily_msg_reset_at, 0) < day_start then
    bond.daily_msg_count = 0
    bond.daily_msg_reset_at = day_start
    return true
  end
  return false
end

local function log_event(events_key, events_max, event)
  redis.call('LPUSH', events_key, cjson.encode(event))
  redis.call('LTRIM', events_key, 0, events_max - 1)
end

local function publish(stream, maxlen, env)
  if env.payload.guild_id == nil and env.topic ~= 'bond.admin_action' then
    env.payload.guild_id = cjson.null
  end
  if env.correlation_id == nil then env.correlation_id = cjson.null end
  -- cjson encodes the empty meta table as {}, which is what the contract wants.
  return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'data', cjson.encode(env))
end
