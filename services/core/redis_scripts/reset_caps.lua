-- Reset the daily count of each given bond whose window started before day_start.
-- Idempotent: a second run in the same day finds nothing to reset.
-- KEYS: bond keys;  ARGV: day_start
local day_start = tonumber(ARGV[1])
local reset = 0
for _, key in ipairs(KEYS) do
  local raw = redis.call('GET', key)
  if raw then
    local ok, bond = pcall(cjson.decode, raw)
    if ok and type(bond) == 'table' and roll_day(bond, day_start) then
      if type(bond.notes) ~= 'table' then bond.notes = {} end
      if type(bond.peak_nodes) ~= 'table' then bond.peak_nodes = {} end
      redis.call('SET', key, encode_bond(bond), 'KEEPTTL')
      reset = reset + 1
    end
  end
end
return reset
