-- Record that a dispatcher heard from a site's agent now (a hello or a heartbeat). A site that
-- was declared LOST goes back to the state it had before.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 site id, 3 now (s), 4 dispatcher id
-- Returns: -1 no such site; 0 recorded; 1 recorded, and the site was LOST until now (its
--          attempts were requeued: the caller must reconcile before renewing the agent's lease)
local p, site, now = ARGV[1], ARGV[2], ARGV[3]
local skey = p .. 'site:' .. site
if redis.call('EXISTS', skey) == 0 then return -1 end
redis.call('HSET', skey, 'hb', now, 'conn', ARGV[4])
if redis.call('HGET', skey, 'state') ~= '4' then return 0 end
local before = redis.call('HGET', skey, 'state_before_lost') or '1'
redis.call('HSET', skey, 'state', before, 'state_changed', now)
redis.call('HDEL', skey, 'state_before_lost')
redis.call('INCR', p .. 'sites:ver')
redis.call('PUBLISH', p .. 'wake', '1')
return 1
