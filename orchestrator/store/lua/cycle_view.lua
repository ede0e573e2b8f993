-- Everything a scheduler cycle reads before it places, in one call (one consistent view, and
-- one round trip where there were some ten: each waits its turn at a busy Redis): the epoch,
-- advanced; the front of every queue; every site; every tenant; the surplus-class jobs placed.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 the epoch key, 3 most jobs to read of each queue, 4 the fields to read of
--       each surplus-class job, space-separated, 5 silent before: a time (s), or '' for none
-- Returns: {epoch, queues, sites, tenants, surplus}, each list flat and sorted by id:
--   queues:  per queue, its name and its first jobs (flat id, score list, as ZRANGE WITHSCORES)
--   sites:   per site, its id and the four items of add_site_row (_lib.lua); with a silent-before
--            time and no job pending, only the sites last heard from before it (an idle cycle
--            only looks for silent sites: reading every site cost it some 60 ms of CPU, Redis's
--            and its own, at 1,000 sites)
--   tenants: per tenant, its id, its spec (false if gone) and its used counters (flat)
--   surplus: per job, its id and the fields of ARGV[4] (false where missing)
local p, epoch_key, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local function sorted_members(key)
  local ids = redis.call('SMEMBERS', key)
  table.sort(ids)
  return ids
end

local epoch = redis.call('INCR', epoch_key)

local queues, pending = {}, 0
for _, q in ipairs(sorted_members(p .. 'queues')) do
  local front = redis.call('ZRANGE', p .. 'pending:' .. q, 0, limit - 1, 'WITHSCORES')
  queues[#queues + 1] = q
  queues[#queues + 1] = front
  pending = pending + #front
end

local silent_before = pending == 0 and tonumber(ARGV[5]) or nil
local sites = {}
for _, id in ipairs(sorted_members(p .. 'sites')) do
  local hb = silent_before and tonumber(redis.call('HGET', p .. 'site:' .. id, 'hb'))
  if not silent_before or (hb and hb < silent_before) then
    sites[#sites + 1] = id
    add_site_row(sites, p, id)
  end
end

local tenants = {}
for _, id in ipairs(sorted_members(p .. 'tenants')) do
  tenants[#tenants + 1] = id
  tenants[#tenants + 1] = redis.call('HGET', p .. 'tenant:' .. id, 'spec')
  tenants[#tenants + 1] = redis.call('HGETALL', p .. 'tenant:' .. id .. ':used')
end

local fields = {}
for name in string.gmatch(ARGV[4], '%S+') do fields[#fields + 1] = name end
local surplus = {}
for _, id in ipairs(sorted_members(p .. 'surplus')) do
  surplus[#surplus + 1] = id
  surplus[#surplus + 1] = redis.call('HMGET', p .. 'job:' .. id, unpack(fields))
end

return {epoch, queues, sites, tenants, surplus}
