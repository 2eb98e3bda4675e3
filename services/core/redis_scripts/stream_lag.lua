-- A consumer group's lag (entries after its last-delivered id) where XINFO
-- GROUPS gives none: Redis before 7.0, and Redis 7 once an entry the group
-- has not read was deleted (erasure deletes entries). Counts in chunks inside
-- Redis, so no entry crosses the wire, and stops at ARGV[2]: the count blocks
-- Redis while it runs (about 1.3 ms per 1,000 entries), and a group that far
-- behind is already alerted on.
-- KEYS[1]: the stream; ARGV[1]: the group's last-delivered id; ARGV[2]: the limit
local chunk = 1000
local limit = tonumber(ARGV[2])
local start = '(' .. ARGV[1]
local count = 0
while count < limit do
  local want = math.min(chunk, limit - count)
  local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', want)
  local n = #entries
  count = count + n
  if n < want then
    return count
  end
  start = '(' .. entries[n][1]
end
return count
