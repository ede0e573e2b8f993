-- Change a site's offers and/or base policy and apply its effective policy, in one step. The
-- caller read the site's registration and offers at policy version ARGV[3] and computed the
-- effective policy from them (orchestrator.federation.effective_policy); if another write came
-- in between, the version differs and nothing is written ('conflict': read again, retry).
-- Used by set_site_policy (new registration bytes), put_offer / delete_offer (offer ops) and
-- refresh_offers (neither: hour windows opened or closed).
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 site id, 3 policy version read, 4 now (s),
--       5 registration (Site protobuf bytes with the new base policy; '' keeps it),
--       6 effective policy (SitePolicy protobuf bytes), 7 pol:c (countries as ',NO,SE,'),
--       8 pol:t (tenants), 9 pol:surplus (GPUs, '' for no limit),
--       then 3 per offer op: 'put' | 'del', offer id, offer (CapacityOffer protobuf bytes; ''
--       for del)
-- Returns: {'ok', 1 if the effective policy changed else 0} | {'missing', ''} |
--          {'conflict', ''} | {'no_offer', offer id} (a del of an offer the site does not have)
local p, site = ARGV[1], ARGV[2]
local skey = p .. 'site:' .. site
local okey = skey .. ':offers'
if redis.call('EXISTS', skey) == 0 then return {'missing', ''} end
if (redis.call('HGET', skey, 'pver') or '0') ~= ARGV[3] then return {'conflict', ''} end
for i = 10, #ARGV, 3 do
  if ARGV[i] == 'del' and redis.call('HEXISTS', okey, ARGV[i + 1]) == 0 then
    return {'no_offer', ARGV[i + 1]}
  end
end
bump_policy_version(skey, ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', skey, 'reg', ARGV[5], 'registered', ARGV[4]) end
for i = 10, #ARGV, 3 do
  if ARGV[i] == 'put' then
    redis.call('HSET', okey, ARGV[i + 1], ARGV[i + 2])
  else
    redis.call('HDEL', okey, ARGV[i + 1])
  end
end
if redis.call('EXISTS', okey) == 1 then
  redis.call('SADD', p .. 'offers', site)
else
  redis.call('SREM', p .. 'offers', site)
end
local changed = set_effective_policy(p, site, ARGV[6], ARGV[7], ARGV[8], ARGV[9])
return {'ok', changed and 1 or 0}
