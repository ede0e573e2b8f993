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

local function check(j, site, gt, watts)
  if not j or j.unsched == '1' or j.cancel == '1' then return 'stale' end
  local skey = p .. 'site:' .. site
  local s = redis.call('HMGET', skey, 'state', 'cap:cpus', 'cap:mem', 'cap:gpu:' .. gt,
                       'cap:watts', 'jur', 'home', 'pol:c', 'pol:t', 'pol:surplus')
  if s[1] ~= '1' then return 'site' end
  local jur, home, pol_c, pol_t = s[6] or '', s[7] or '', s[8] or '', s[9] or ''
  if j.allowed ~= '' and not holds(j.allowed, jur) then return 'residency' end
  if holds(j.excl, site) then return 'excluded' end
  local country = redis.call('HGET', p .. 'tenant:' .. j.tenant, 'country') or ''
  if (pol_c ~= '' or pol_t ~= '') and not (holds(pol_t, j.tenant) or holds(pol_c, country)) then
    return 'policy'
  end
  local u = redis.call('HMGET', skey .. ':used', 'cpus', 'mem', 'gpu:' .. gt, 'watts',
                       'gpu_nonhome')
  local gpus, cpus, mem = tonumber(j.r_gpus), tonumber(j.r_cpus), tonumber(j.r_mem)
  if (tonumber(u[1]) or 0) + cpus > (tonumber(s[2]) or 0)
    or (tonumber(u[2]) or 0) + mem > (tonumber(s[3]) or 0)
    or (gpus > 0 and (gt == '' or (tonumber(u[3]) or 0) + gpus > (tonumber(s[4]) or 0))) then
    return 'capacity'
  end
  if s[5] and (tonumber(u[4]) or 0) + watts > tonumber(s[5]) then return 'power' end
  local nonhome = home ~= '' and not holds(home, country)
  if nonhome and s[10] and (tonumber(u[5]) or 0) + gpus > tonumber(s[10]) then
    return 'surplus'
  end
  local t = redis.call('HMGET', p .. 'tenant:' .. j.tenant, 'q:gpus', 'q:gpus:' .. jur)
  local tu = redis.call('HMGET', p .. 'tenant:' .. j.tenant .. ':used', 'gpus', 'gpus:' .. jur)
  if t[1] and (tonumber(tu[1]) or 0) + gpus > tonumber(t[1]) then return 'quota' end
  if t[2] and (tonumber(tu[2]) or 0) + gpus > tonumber(t[2]) then return 'quota' end
  return 'ok', jur, nonhome
end

for i = 4, #ARGV, 5 do
  local id, attempt, site, gt, watts = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  local j = load_job(p, id)
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
    if gpus > 0 then redis.call('HINCRBY', ukey, 'gpu:' .. gt, gpus) else gt = '' end
    redis.call('HINCRBY', ukey, 'cpus', cpus)
    redis.call('HINCRBY', ukey, 'mem', mem)
    redis.call('HINCRBY', ukey, 'watts', watts)
    if nonhome then redis.call('HINCRBY', ukey, 'gpu_nonhome', gpus) end
    local tused = p .. 'tenant:' .. j.tenant .. ':used'
    redis.call('HINCRBY', tused, 'gpus', gpus)
    redis.call('HINCRBY', tused, 'gpus:' .. jur, gpus)
    redis.call('HINCRBY', tused, 'cpus', cpus)
    redis.call('HINCRBY', tused, 'mem', mem)
    redis.call('HSET', p .. 'job:' .. id, 'state', '2', 'site', site, 'gpu_type', gt,
               'r_watts', watts, 'nonhome', nonhome and '1' or '0', 'jur', jur,
               'updated', now, 'reason', 'placed on ' .. site)
    redis.call('ZREM', p .. 'pending:' .. j.queue, id)
    redis.call('SADD', skey .. ':active', id)
    redis.call('ZADD', skey .. ':outbox', now, id)
    if j.prio == '1' then redis.call('SADD', p .. 'surplus', id) end
    emit(p, id, '2', attempt, site, 'scheduled on ' .. site, now, '', maxlen)
    touched[site] = true
  end
  out[#out + 1] = code
end
for site, _ in pairs(touched) do redis.call('PUBLISH', p .. 'notify', site) end
return out
