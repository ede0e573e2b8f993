-- Create or replace a tenant (home country, weight, quotas); its usage counters are kept.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 tenant id, 3 tenant (Tenant protobuf bytes), 4 country, 5 weight,
--       then pairs of quota field, GPUs (q:gpus overall, q:gpus:{country})
-- Returns: 1
local p, tenant = ARGV[1], ARGV[2]
local key = p .. 'tenant:' .. tenant
redis.call('DEL', key)
redis.call('HSET', key, 'spec', ARGV[3], 'country', ARGV[4], 'weight', ARGV[5])
for i = 6, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
redis.call('SADD', p .. 'tenants', tenant)
redis.call('PUBLISH', p .. 'wake', '1')
return 1
