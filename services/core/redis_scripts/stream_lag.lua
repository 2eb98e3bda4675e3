-- A consumer group's lag (entries after its last-delivered id) for servers
-- whose XINFO GROUPS does not report one (Redis before 7.0). Counts in
-- chunks inside Redis, so no entry crosses the wire; the stream is bounded by
-- VIGIL_STREAM_MAXLEN, and a group that is caught up costs one XRANGE.
-- KEYS[1]: the stream; ARGV[1]: the group's last-delivered id
local chunk = 1000
local start = '(' .. ARGV[1]
local count = 0
while true do
  local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', chunk)
  local n = #entries
  count = count + n
  if n < chunk then
    return count
  end
  start = '(' .. entries[n][1]
end
