-- Register a site or update its registration. A new site starts ACTIVE; an existing one keeps
-- its state. Capacity fields are replaced whole.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 site id, 3 registration (Site protobuf bytes), 4 now (s),
--       then pairs of field, value: capacity (cap:cpus, cap:mem, cap:gpu:{type}, cap:watts),
--       jurisdiction (jur), home countries (home, as ',NO,'), policy (pol:c countries,
--       pol:t tenants, pol:surplus GPUs)
-- Returns: the site's state
local p, site = ARGV[1], ARGV[2]
local skey = p .. 'site:' .. site
for _, f in ipairs(redis.call('HKEYS', skey)) do
  local head = string.sub(f, 1, 4)
  if head == 'cap:' or head == 'pol:' or f == 'jur' or f == 'home' then
    redis.call('HDEL', skey, f)
  end
end
redis.call('HSET', skey, 'reg', ARGV[3], 'registered', ARGV[4])
for i = 5, #ARGV, 2 do redis.call('HSET', skey, ARGV[i], ARGV[i + 1]) end
local state = redis.call('HGET', skey, 'state')
if not state then
  state = '1'
  redis.call('HSET', skey, 'state', state)
end
redis.call('SADD', p .. 'sites', site)
redis.call('INCR', p .. 'sites:ver')
return state
