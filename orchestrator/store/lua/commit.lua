-- Commit a batch of placement decisions. Every hard constraint is checked again here against
-- the live counters; a decision whose preconditions changed since the scheduler's snapshot is
-- dropped, not forced.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 now (s), 3 events maxlen, then 5 per decision:
--       job id, attempt, site id, GPU type ('' for CPU-only), watts the job will draw there
-- Returns: one code per decision: 'ok'; 'stale' (job no longer PENDING at that attempt, or
--          cancel requested); 'site' (site not ACTIVE or unknown); 'residency'; 'excluded';
--          'policy'; 'capacity' (GPUs, CPUs or memory); 'power'; 'surplus'; 'quota'
local p, now, maxlen = ARGV[1], ARGV[2], ARGV[3]
local out, touched = {}, {}
local COMMIT = {'state', 'attempt', 'unsched', 'cancel', 'allowed', 'excl', 'tenant', 'r_gpus',
                'r_cpus', 'r_mem', 'queue', 'prio', 'h'}
BUFFERED = true  -- counters: read once per site and tenant, kept here, written once (flush)

-- What this call read of sites and tenants, and what it changed since (kept current here).
local SITES, USED, COUNTRY, QUOTA, TUSED = {}, {}, {}, {}, {}
local ADD_ACTIVE, ADD_OUTBOX, ADD_SURPLUS = {}, {}, {}

local function site_fields(site, gt)
  local k = site .. '\31' .. gt
  local s = SITES[k]
  if not s then
    s = redis.call('HMGET', p .. 'site:' .. site, 'state', 'cap:cpus', 'cap:mem',
                   'cap:gpu:' .. gt, 'cap:watts', 'jur', 'home', 'pol:c', 'pol:t', 'pol:surplus')
    SITES[k] = s
  end
  return s
end

-- A hash of counters as a table of numbers (read once per call).
local function counters(cache, key)
  local c = cache[key]
  if not c then
    c = {}
    local flat = redis.call('HGETALL', key)
    for i = 1, #flat, 2 do c[flat[i]] = tonumber(flat[i + 1]) or 0 end
    cache[key] = c
  end
  return c
end

local function add(cache, key, field, n)
  local c = counters(cache, key)
  c[field] = (c[field] or 0) + n
  incr(key, field, n)
end

local function tenant_country(tenant)
  local c = COUNTRY[tenant]
  if not c then
    c = redis.call('HGET', p .. 'tenant:' .. tenant, 'country') or ''
    COUNTRY[tenant] = c
  end
  return c
end

local function quota(tenant, jur)
  local k = tenant .. '\31' .. jur
  local q = QUOTA[k]
  if not q then
    q = redis.call('HMGET', p .. 'tenant:' .. tenant, 'q:gpus', 'q:gpus:' .. jur)
    QUOTA[k] = q
  end
  return q
end

local function push(sets, key, ...)
  local members = slot(sets, key)
  for _, v in ipairs({...}) do members[#members + 1] = v end
end

local function check(j, site, gt, watts)
  if not j or j.unsched == '1' or j.cancel == '1' then return 'stale' end
  local s = site_fields(site, gt)
  if s[1] ~= '1' then return 'site' end
  local jur, home, pol_c, pol_t = s[6] or '', s[7] or '', s[8] or '', s[9] or ''
  if j.allowed ~= '' and not holds(j.allowed, jur) then return 'residency' end
  if holds(j.excl, site) then return 'excluded' end
  local country = tenant_country(j.tenant)
  if (pol_c ~= '' or pol_t ~= '') and not (holds(pol_t, j.tenant) or holds(pol_c, country)) then
    return 'policy'
  end
  local u = counters(USED, p .. 'site:' .. site .. ':used')
  local gpus, cpus, mem = tonumber(j.r_gpus), tonumber(j.r_cpus), tonumber(j.r_mem)
  if (u.cpus or 0) + cpus > (tonumber(s[2]) or 0)
    or (u.mem or 0) + mem > (tonumber(s[3]) or 0)
    or (gpus > 0 and (gt == '' or (u['gpu:' .. gt] or 0) + gpus > (tonumber(s[4]) or 0))) then
    return 'capacity'
  end
  if s[5] and (u.watts or 0) + watts > tonumber(s[5]) then return 'power' end
  local nonhome = home ~= '' and not holds(home, country)
  if nonhome and s[10] and (u.gpu_nonhome or 0) + gpus > tonumber(s[10]) then
    return 'surplus'
  end
  local t = quota(j.tenant, jur)
  local tu = counters(TUSED, p .. 'tenant:' .. j.tenant .. ':used')
  if t[1] and (tu.gpus or 0) + gpus > tonumber(t[1]) then return 'quota' end
  if t[2] and (tu['gpus:' .. jur] or 0) + gpus > tonumber(t[2]) then return 'quota' end
  return 'ok', jur, nonhome
end

for i = 4, #ARGV, 5 do
  local id, attempt, site, gt, watts = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  local j = load_job(p, id, COMMIT)
  local code, jur, nonhome
  if j and j.state == '1' and j.attempt == attempt then
    code, jur, nonhome = check(j, site, gt, watts)
  else
    code = 'stale'
  end
  if code == 'ok' then
    local skey = p .. 'site:' .. site
    local ukey = skey .. ':used'
    local gpus, cpus, mem = tonumber(j.r_gpus), tonumber(j.r_cpus), tonumber(j.r_mem)
    if gpus > 0 then add(USED, ukey, 'gpu:' .. gt, gpus) else gt = '' end
    add(USED, ukey, 'cpus', cpus)
    add(USED, ukey, 'mem', mem)
    add(USED, ukey, 'watts', watts)
    if nonhome then add(USED, ukey, 'gpu_nonhome', gpus) end
    local tused = p .. 'tenant:' .. j.tenant .. ':used'
    add(TUSED, tused, 'gpus', gpus)
    add(TUSED, tused, 'gpus:' .. jur, gpus)
    add(TUSED, tused, 'cpus', cpus)
    add(TUSED, tused, 'mem', mem)
    redis.call('HSET', p .. 'job:' .. id, 'state', '2', 'site', site, 'gpu_type', gt,
               'r_watts', watts, 'nonhome', nonhome and '1' or '0', 'jur', jur,
               'updated', now, 'reason', 'placed on ' .. site,
               'h', event(j, id, '2', attempt, site, 'scheduled on ' .. site, now, ''))
    zrem(p .. 'pending:' .. j.queue, id)
    push(ADD_ACTIVE, skey .. ':active', id)
    push(ADD_OUTBOX, skey .. ':outbox', now, id)
    if j.prio == '1' then push(ADD_SURPLUS, p .. 'surplus', id) end
    touched[site] = true
  end
  out[#out + 1] = code
end
for _, pair in ipairs({{ADD_ACTIVE, 'SADD'}, {ADD_OUTBOX, 'ZADD'}, {ADD_SURPLUS, 'SADD'}}) do
  for key, members in pairs(pair[1]) do add_members(pair[2], key, members) end
end
flush(p, maxlen)
for site, _ in pairs(touched) do redis.call('PUBLISH', p .. 'notify', site) end
return out
