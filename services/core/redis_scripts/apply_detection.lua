-- Round trip 2 of a batch: apply each detection to the bond, its events,
-- history and stream, all or nothing per detection, exactly once per dedupe entry.
-- KEYS: 5 per detection: bond, events, dedupe hash, history, bond_stream; then
--   the metrics hash
--   (run_batch in _bond.lua and services/core/scripts.py)
-- ARGV[1]: JSON array, one object per detection; ARGV[3]: what they share
--   (services/bonds/ledger.py: detection_args, detection_shared)
-- Returns one reply per detection (decoded in services/core/replies.py): {'duplicate'} | {'applied', changed, stored} | {'error', reason}
-- a.count_message: the gate did not count this message (its user had no cap),
-- so the apply counts it, unless another delivery's gate has since.

local function apply(a, bond_key, events_key, dedupe_key, history_key, stream)
  local seen, first_seen = dedupe_get(dedupe_key, a.field, a.dedupe)
  -- 'limited': another delivery of this message was rate-limited (a cap set
  -- while this one ran): that is its outcome.
  if seen == 'done' or seen == 'limited' then
    count_metric((a.counted_as or 'detections') .. ':duplicate')
    return {'duplicate'}
  end

  local bond = load_bond(bond_key, a.user_id, a.default_cap)
  if bond.err then return {'error', bond.err} end
  roll_day(bond, a.day_start)
  if a.count_message and seen == nil then
    bond.daily_msg_count = num(bond.daily_msg_count, 0) + 1
  end
  local d = a.detection
  local now = a.now
  local guild = a.guild_id
  if guild == cjson.null then guild = nil end
  local changed = {}

  if d.phase ~= bond.phase then
    local old = bond.phase
    log_event(events_key, a.events_max, {
      timestamp = now, event_type = 'phase_transition', detail = old .. ' -> ' .. d.phase,
      data = {from = old, to = d.phase, confidence = d.confidence,
              primary_signal = d.primary_signal},
    })
    publish(stream, a.maxlen, {
      schema_version = '1', topic = 'bond.phase_transition',
      envelope_id = envelope_id(a.cause, 'bond.phase_transition'),
      published_at = a.published_at, correlation_id = a.correlation_id, meta = {},
      payload = {user_id = a.user_id, guild_id = guild, from_phase = old, to_phase = d.phase,
                 confidence = d.confidence, primary_signal = d.primary_signal},
    })
    bond.prev_phase = old
    bond.phase = d.phase
    bond.phase_entered_at = now
    changed[#changed + 1] = 'phase'
    count_metric('phase:' .. d.phase)
  end

  if d.risk_level ~= bond.risk_level then
    local old = bond.risk_level
    log_event(events_key, a.events_max, {
      timestamp = now, event_type = 'risk_change', detail = 'risk: ' .. old .. ' -> ' .. d.risk_level,
      data = {from = old, to = d.risk_level},
    })
    publish(stream, a.maxlen, {
      schema_version = '1', topic = 'bond.risk_change',
      envelope_id = envelope_id(a.cause, 'bond.risk_change'),
      published_at = a.published_at, correlation_id = a.correlation_id, meta = {},
      payload = {user_id = a.user_id, guild_id = guild, from_risk = old, to_risk = d.risk_level},
    })
    bond.risk_level = d.risk_level
    changed[#changed + 1] = 'risk'
    count_metric('risk:' .. d.risk_level)
  end

  bond.archetype = d.archetype
  bond.egg_status = d.egg_status
  if d.turn_count ~= nil and d.turn_count ~= cjson.null then bond.turn_count = d.turn_count end
  for node, val in pairs(d.ulm_vector) do
    local peak = bond.peak_nodes[node]
    if peak == nil or peak == cjson.null then peak = 0 end
    if val > peak then
      bond.peak_nodes[node] = math.floor(val * 10000 + 0.5) / 10000
    end
  end
  bond.last_updated = now
  redis.call('SET', bond_key, encode_bond(bond))

  local stored = 0
  if a.history ~= nil and a.history ~= cjson.null then
    local h = a.history
    redis.call('ZADD', history_key, h.score, h.member)
    redis.call('ZREMRANGEBYRANK', history_key, 0, -(h.max + 1))
    redis.call('EXPIRE', history_key, h.ttl)
    stored = 1
    count_metric('history_stored')
  end

  -- Keep the first-seen stamp the gate wrote: the user's ids stay in arrival order.
  dedupe_set(dedupe_key, a.field, 'done', a.stamp, a.dedupe, first_seen)
  count_metric((a.counted_as or 'detections') .. ':accepted')
  return {'applied', table.concat(changed, ','), tostring(stored)}
end

return run_batch(apply, 5)
