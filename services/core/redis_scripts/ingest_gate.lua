-- Round trip 1 of a batch of messages: for each, dedupe, atomic daily-cap
-- check-and-count, and its history context.
-- A user without a cap has nothing to enforce here: their message is counted by
-- apply_detection.lua, which writes the bond anyway, so the gate writes nothing
-- (the bond's encode and SET are most of a gate's cost).
-- KEYS: 4 per message: bond, dedupe hash, history, bond_stream;
--   then the metrics hash (run_batch in _bond.lua and services/core/scripts.py)
-- ARGV[1]: JSON array, one object per message; ARGV[3]: what they share
--   (services/ingest/service.py: _gate_item; services/bonds/ledger.py: detection_shared)
-- Returns one reply per message (decoded in services/core/replies.py): {'duplicate', marker} | {'rate_limited', cap, count}
--   | {'accepted', count_or_'redelivered'_or_'uncounted', context} | {'error', reason}

local function context(history_key, limit)
  if limit <= 0 then return {} end
  -- Oldest to newest: the detector reads history as a chronology.
  return redis.call('ZRANGE', history_key, -limit, -1)
end

local function gate(a, bond_key, dedupe_key, history_key, stream)
  local marker = dedupe_get(dedupe_key, a.field, a.dedupe)
  if marker == 'done' or marker == 'limited' then
    count_metric('messages:duplicate')
    return {'duplicate', marker}
  end
  if marker == 'counted' then
    -- Counted by an earlier delivery that died before applying: do not count twice.
    return {'accepted', 'redelivered', context(history_key, a.context_limit)}
  end

  local bond = load_bond(bond_key, a.user_id, a.default_cap)
  if bond.err then return {'error', bond.err} end
  roll_day(bond, a.day_start)
  local cap = num(bond.daily_msg_cap, 0)
  local count = num(bond.daily_msg_count, 0)
  if cap <= 0 then return {'accepted', 'uncounted', context(history_key, a.context_limit)} end

  if count >= cap then
    redis.call('SET', bond_key, encode_bond(bond))
    dedupe_set(dedupe_key, a.field, 'limited', a.stamp, a.dedupe)
    publish(stream, a.maxlen, {
      schema_version = '1', envelope_id = envelope_id(a.cause, 'message.rate_limited'),
      topic = 'message.rate_limited',
      published_at = a.published_at, correlation_id = a.message_id, meta = {},
      payload = {user_id = a.user_id, guild_id = a.guild_id, platform = a.platform,
                 message_id = a.message_id, cap = cap, count = count},
    })
    count_metric('messages:rate_limited')
    return {'rate_limited', tostring(cap), tostring(count)}
  end

  bond.daily_msg_count = count + 1
  bond.last_updated = a.now
  redis.call('SET', bond_key, encode_bond(bond))
  dedupe_set(dedupe_key, a.field, 'counted', a.stamp, a.dedupe)
  return {'accepted', tostring(count + 1), context(history_key, a.context_limit)}
end

return run_batch(gate, 4)
