-- Register a site or update its registration. A new site starts ACTIVE; an existing one keeps
-- its state and its capacity offers. Capacity and policy fields are replaced whole, and jobs
-- marked unschedulable are looked at again.
-- Ownership: the operator's path (check 0) records the owner given; a partner's path (check 1)
-- registers a new site as the partner's, updates a site the partner owns, and changes nothing
-- at a site owned by someone else (or by no one: an operator-registered site without owner).
-- The effective policy (base policy with the site's offers, computed by the caller from the
-- offers it read at policy version ARGV[7]) is applied only if that version still holds.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 site id, 3 registration (Site protobuf bytes), 4 now (s),
--       5 check owner (0 operator | 1 partner), 6 owner, 7 policy version read ('0' if none),
--       8 effective policy (SitePolicy protobuf bytes), 9 pol:c (countries as ',NO,SE,'),
--       10 pol:t (tenants), 11 pol:surplus (GPUs, '' for no limit),
--       then pairs of field, value: capacity (cap:cpus, cap:mem, cap:gpu:{type}, cap:watts),
--       jurisdiction (jur), home countries (home, as ',NO,')
-- Returns: {'ok', state} | {'denied', current owner} | {'conflict', ''}
local p, site = ARGV[1], ARGV[2]
local skey = p .. 'site:' .. site
local exists = redis.call('EXISTS', skey) == 1
if ARGV[5] == '1' and exists then
  local owner = redis.call('HGET', skey, 'owner') or ''
  if owner ~= ARGV[6] then return {'denied', owner} end
end
if not bump_policy_version(skey, ARGV[7]) then return {'conflict', ''} end
for _, f in ipairs(redis.call('HKEYS', skey)) do
  local head = string.sub(f, 1, 4)
  if head == 'cap:' or f == 'jur' or f == 'home' then
    redis.call('HDEL', skey, f)
  end
end
redis.call('HSET', skey, 'reg', ARGV[3], 'registered', ARGV[4], 'owner', ARGV[6])
for i = 12, #ARGV, 2 do redis.call('HSET', skey, ARGV[i], ARGV[i + 1]) end
set_effective_policy(p, site, ARGV[8], ARGV[9], ARGV[10], ARGV[11])
local state = redis.call('HGET', skey, 'state')
if not state then
  state = '1'
  redis.call('HSET', skey, 'state', state)
end
redis.call('SADD', p .. 'sites', site)
redis.call('INCR', p .. 'sites:ver')
reconsider_all(p)  -- a new or changed site may run jobs no site could run before
return {'ok', state}
