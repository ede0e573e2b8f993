-- Record that a dispatcher heard from sites' agents now (a hello or heartbeats), for any number
-- of sites in one call. A site that was declared LOST goes back to the state it had before.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 now (s), 3 dispatcher id, then one site id per site heard from
-- Returns: one code per site, in order: -1 no such site; 0 recorded; 1 recorded, and the site
--          was LOST until now (its attempts were requeued: the caller must reconcile before
--          renewing the agent's lease)
local p, now, conn = ARGV[1], ARGV[2], ARGV[3]
local out = {}
local back = false
for i = 4, #ARGV do
  local skey = p .. 'site:' .. ARGV[i]
  local state = redis.call('HGET', skey, 'state')  -- every registered site has one
  if not state then
    out[#out + 1] = -1
  elseif state ~= '4' then
    redis.call('HSET', skey, 'hb', now, 'conn', conn)
    out[#out + 1] = 0
  else
    local before = redis.call('HGET', skey, 'state_before_lost') or '1'
    redis.call('HSET', skey, 'hb', now, 'conn', conn, 'state', before, 'state_changed', now)
    redis.call('HDEL', skey, 'state_before_lost')
    back = true
    out[#out + 1] = 1
  end
end
if back then
  redis.call('INCR', p .. 'sites:ver')
  redis.call('PUBLISH', p .. 'wake', '1')
end
return out
