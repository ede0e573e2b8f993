-- Read the usage of sites in one consistent step: what ended attempts added (add_usage in
-- _lib.lua) and the attempts running there now, so that none is counted twice or missed.
-- Read only.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, then site ids
-- Returns: per site, {usage hash as a flat list (gs:{tenant} GPU-seconds, j:{tenant} joules),
--          running attempts as a flat list, 4 each: tenant, GPUs, watts, started (s)}
local p = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local skey = p .. 'site:' .. ARGV[i]
  local running = {}
  for _, id in ipairs(redis.call('SMEMBERS', skey .. ':active')) do
    local v = redis.call('HMGET', p .. 'job:' .. id, 'state', 'site', 'tenant', 'r_gpus',
                         'r_watts', 'started')
    if (v[1] == '4' or v[1] == '8') and v[2] == ARGV[i] and v[6] then
      running[#running + 1] = v[3]
      running[#running + 1] = v[4] or '0'
      running[#running + 1] = v[5] or '0'
      running[#running + 1] = v[6]
    end
  end
  out[#out + 1] = {redis.call('HGETALL', skey .. ':usage'), running}
end
return out
