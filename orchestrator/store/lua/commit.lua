-- Commit a batch of placement decisions. Each is re-checked here; one whose preconditions
-- changed since the scheduler's snapshot is dropped, not forced.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 now (s), 3 events maxlen, then 4 per decision:
--       job id, attempt, site id, GPU type ('' for CPU-only)
-- Returns: one code per decision: 'ok', 'stale' (job no longer PENDING at that attempt, or
--          cancel requested), 'site' (site not ACTIVE or unknown), 'capacity' (would overbook)
local p, now, maxlen = ARGV[1], ARGV[2], ARGV[3]
local out, touched = {}, {}
for i = 4, #ARGV, 4 do
  local id, attempt, site, gt = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local j = load_job(p, id)
  local code = 'ok'
  if not j or j.state ~= '1' or j.attempt ~= attempt or j.cancel == '1' or j.unsched == '1' then
    code = 'stale'
  else
    local skey = p .. 'site:' .. site
    local s = redis.call('HMGET', skey, 'state', 'cap:cpus', 'cap:mem', 'cap:gpu:' .. gt)
    if s[1] ~= '1' then
      code = 'site'
    else
      local ukey = skey .. ':used'
      local u = redis.call('HMGET', ukey, 'cpus', 'mem', 'gpu:' .. gt)
      local gpus, cpus, mem = tonumber(j.r_gpus), tonumber(j.r_cpus), tonumber(j.r_mem)
      if (tonumber(u[1]) or 0) + cpus > (tonumber(s[2]) or 0)
        or (tonumber(u[2]) or 0) + mem > (tonumber(s[3]) or 0)
        or (gpus > 0 and (gt == '' or (tonumber(u[3]) or 0) + gpus > (tonumber(s[4]) or 0))) then
        code = 'capacity'
      else
        if gpus > 0 then redis.call('HINCRBY', ukey, 'gpu:' .. gt, gpus) else gt = '' end
        redis.call('HINCRBY', ukey, 'cpus', cpus)
        redis.call('HINCRBY', ukey, 'mem', mem)
        redis.call('HSET', p .. 'job:' .. id, 'state', '2', 'site', site, 'gpu_type', gt,
                   'updated', now, 'reason', 'placed on ' .. site)
        redis.call('ZREM', p .. 'pending:' .. j.queue, id)
        redis.call('SADD', skey .. ':active', id)
        redis.call('ZADD', skey .. ':outbox', now, id)
        emit(p, id, '2', attempt, site, 'scheduled on ' .. site, now, '', maxlen)
        touched[site] = true
      end
    end
  end
  out[#out + 1] = code
end
for site, _ in pairs(touched) do redis.call('PUBLISH', p .. 'notify', site) end
return out
