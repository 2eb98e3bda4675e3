-- Shared helpers, prepended to every bond script by services/scripts.py.
-- Bonds are stored as the seed ledger wrote them: one JSON object at abl:{user_id}.

-- Pipeline counters (services/metrics): a script that is given the metrics hash
-- (last in KEYS) sets metrics_key; without it count_metric does nothing. Counts
-- add up in metric_counts and flush_metrics writes them once per script call,
-- so a batch costs one HINCRBY per counter, not per item.
local metrics_key = nil
local metric_counts = {}
local function count_metric(field, n)
  if metrics_key then metric_counts[field] = (metric_counts[field] or 0) + (n or 1) end
end

local function flush_metrics()
  if not metrics_key then return end
  for field, n in pairs(metric_counts) do redis.call('HINCRBY', metrics_key, field, n) end
  metric_counts = {}
end

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

-- cjson cannot tell an empty array from an empty object and writes both as {};
-- the seed wrote notes as a list (peak_nodes as an object), so empty notes are
-- spliced in as [].
local function encode_bond(bond)
  local notes = bond.notes
  if type(notes) ~= 'table' or next(notes) ~= nil then return cjson.encode(bond) end
  bond.notes = nil
  local body = cjson.encode(bond)
  bond.notes = notes
  if body == '{}' then return '{"notes":[]}' end
  return body:sub(1, -2) .. ',"notes":[]}'
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
  if redis.call('LPUSH', events_key, cjson.encode(event)) > events_max then
    redis.call('LTRIM', events_key, 0, events_max - 1)
  end
end

local function publish(stream, maxlen, env)
  if env.payload.guild_id == nil and env.topic ~= 'bond.admin_action' then
    env.payload.guild_id = cjson.null
  end
  if env.correlation_id == nil then env.correlation_id = cjson.null end
  -- cjson encodes the empty meta table as {}, which is what the contract wants.
  local entry_id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'data', cjson.encode(env))
  count_metric('envelopes:' .. env.topic)
  return entry_id
end

-- Dedupe state (keys.message_dedupe / detection_dedupe; read by services/ingest/dedupe.py):
-- one hash per (platform, user), field = id, value = stamp_ms * 4 + state code, where
-- stamp_ms is when the id was first seen. d = {now_ms, window_ms, max, slack,
-- horizon_ms, flood_max}. An entry older than the window counts as absent.
-- Past max + slack entries the hash is pruned to its newest max live ones, but
-- an entry younger than the horizon is kept (a redelivery or a replay of it
-- must be recognised whatever the user's rate) unless the hash holds more than
-- flood_max: so the size is bounded per user, by max normally, by flood_max
-- (plus slack) in a flood.
local DEDUPE_STATE = {'counted', 'limited', 'done'}
local DEDUPE_CODE = {counted = 1, limited = 2, done = 3}

local function dedupe_live(raw, d)
  local v = tonumber(raw)
  if v == nil then return nil end
  local code = v % 4
  local stamp = (v - code) / 4
  if d.now_ms - stamp >= d.window_ms then return nil end
  return DEDUPE_STATE[code], stamp
end

-- The id's live state and first-seen stamp, or nil. (Per-message marker keys
-- from before the per-user hashes expired within the dedupe window of the
-- upgrade: nothing reads them.)
local function dedupe_get(key, field, d)
  return dedupe_live(redis.call('HGET', key, field), d)
end

local function dedupe_prune(key, d)
  local flat = redis.call('HGETALL', key)
  local live, drop = {}, {}
  for i = 1, #flat, 2 do
    local state, stamp = dedupe_live(flat[i + 1], d)
    if state then
      live[#live + 1] = {flat[i], stamp}
    else
      drop[#drop + 1] = flat[i]
    end
  end
  if #live > d.max then
    table.sort(live, function(x, y) return x[2] < y[2] end)
    local left = #live
    for i = 1, #live do
      if left <= d.max then break end
      -- Oldest first; the young stop it unless the flood bound is passed.
      if d.now_ms - live[i][2] < d.horizon_ms and left <= d.flood_max then break end
      drop[#drop + 1] = live[i][1]
      left = left - 1
    end
  end
  for i = 1, #drop, 500 do
    redis.call('HDEL', key, unpack(drop, i, math.min(i + 499, #drop)))
  end
end

-- first_seen: the stamp of the live entry being moved on (counted -> done). It
-- is kept, and the key's expiry and size already cover that entry, so only a
-- new entry pays for PEXPIRE and the size check.
local function dedupe_set(key, field, state, stamp, d, first_seen)
  redis.call('HSET', key, field, string.format('%.0f', (first_seen or stamp) * 4 + DEDUPE_CODE[state]))
  if first_seen then return end
  redis.call('PEXPIRE', key, d.window_ms)
  -- Past max + slack, prune once every slack new ids: a hash kept large by its
  -- young entries is not read whole on every message.
  local size = redis.call('HLEN', key)
  if size > d.max + d.slack and (size - d.max - d.slack) % d.slack == 1 % d.slack then
    dedupe_prune(key, d)
  end
end

-- Envelope ids: uuid5(namespace, cause .. '\31' .. topic), the same as
-- models.envelopes.envelope_id, computed only for envelopes that are published.
-- envelope_ns holds the namespace's 16 bytes (set by run_batch).
local envelope_ns = nil
local function envelope_id(cause, topic)
  local h = redis.sha1hex(envelope_ns .. cause .. '\31' .. topic)
  local variant = string.format('%x', tonumber(h:sub(17, 17), 16) % 4 + 8)
  return h:sub(1, 8) .. '-' .. h:sub(9, 12) .. '-5' .. h:sub(14, 16) .. '-' .. variant
    .. h:sub(18, 20) .. '-' .. h:sub(21, 32)
end

-- The batch scripts (ingest_gate, apply_detection): KEYS holds `stride` keys per
-- item, then the metrics hash when ARGV[2] is 'metrics'; ARGV[1] is a JSON array
-- of per-item docs and ARGV[3] one JSON doc of what every item shares (each
-- item reads it as its defaults). fn(a, keys...) runs per item; an item that
-- raises answers {'error', reason} and the others still run, except on a
-- demoted master (READONLY: nothing was written), where the whole call fails
-- with READONLY so the client asks the sentinels again and the buffer retries.
local function run_batch(fn, stride)
  if ARGV[2] == 'metrics' then metrics_key = KEYS[#KEYS] end
  local shared = cjson.decode(ARGV[3])
  envelope_ns = (shared.envelope_ns or ''):gsub('..', function(c) return string.char(tonumber(c, 16)) end)
  local defaults = {__index = shared}
  local out = {}
  for i, a in ipairs(cjson.decode(ARGV[1])) do
    setmetatable(a, defaults)
    local k = (i - 1) * stride
    local ok, res = pcall(fn, a, unpack(KEYS, k + 1, k + stride))
    if not ok then
      local reason = type(res) == 'table' and tostring(res.err) or tostring(res)
      if string.find(reason, 'READONLY', 1, true) then
        return redis.error_reply('READONLY ' .. reason)
      end
      res = {'error', reason}
    end
    out[i] = res
  end
  flush_metrics()
  return out
end
