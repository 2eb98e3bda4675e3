-- Admin changes to one bond (set cap, add note), with the event and the envelope.
-- KEYS: bond, events, bond_stream, optionally the metrics hash
-- ARGV: one JSON document (see services/bonds.py)
local bond_key, events_key, stream = KEYS[1], KEYS[2], KEYS[3]
metrics_key = KEYS[4]
local a = cjson.decode(ARGV[1])
local bond = load_bond(bond_key, a.user_id, a.default_cap)
if bond.err then return bond end
local event, detail

if a.action == 'set_cap' then
  local old = num(bond.daily_msg_cap, 0)
  bond.daily_msg_cap = a.cap
  event = {timestamp = a.now, event_type = 'admin_action',
           detail = 'rate limit: ' .. old .. ' -> ' .. a.cap .. ' msgs/day',
           data = {old_cap = old, new_cap = a.cap}}
  detail = {old_cap = old, new_cap = a.cap}
elseif a.action == 'add_note' then
  local notes = bond.notes
  notes[#notes + 1] = a.stamped_note
  while #notes > a.notes_max do table.remove(notes, 1) end
  event = {timestamp = a.now, event_type = 'admin_action',
           detail = 'note added: ' .. a.note_head, data = {note = a.note}}
  detail = {note_chars = a.note_chars}
else
  return redis.error_reply('UNKNOWN_ACTION')
end

bond.last_updated = a.now
redis.call('SET', bond_key, encode_bond(bond))
log_event(events_key, a.events_max, event)
publish(stream, a.maxlen, {
  schema_version = '1', envelope_id = a.envelope_id, topic = 'bond.admin_action',
  published_at = a.published_at, correlation_id = a.correlation_id, meta = {},
  payload = {user_id = a.user_id, action = a.action, detail = detail},
})
flush_metrics()
return encode_bond(bond)
