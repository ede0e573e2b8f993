-- Set a site's administrative state.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 site id, 3 new state (1 ACTIVE, 2 CORDONED, 3 DRAINING, 4 LOST), 4 now (s)
-- Returns: 1, or 0 when there is no such site
local p, site = ARGV[1], ARGV[2]
local skey = p .. 'site:' .. site
if redis.call('EXISTS', skey) == 0 then return 0 end
redis.call('HSET', skey, 'state', ARGV[3], 'state_changed', ARGV[4])
redis.call('HDEL', skey, 'state_before_lost')  -- an operator's word wins over a return from LOST
redis.call('INCR', p .. 'sites:ver')
redis.call('PUBLISH', p .. 'wake', '1')
return 1
