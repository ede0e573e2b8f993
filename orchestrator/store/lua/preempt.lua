-- Preempt SURPLUS-class jobs to make room for higher-priority (or home-ecosystem) work. A
-- victim not yet sent goes straight back to its queue; a sent one becomes PREEMPTED, its agent is
-- told to stop it, and its capacity counts as "releasing" until the agent reports it ended; it
-- then goes back to PENDING with a new attempt. A preemption never counts as a failure.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 now (s), 3 events maxlen, then 3 per victim: job id, attempt, for job id
-- Returns: one code per victim: 'ok' (stopping), 'requeued' (was not sent yet) or 'stale'
local p, now, maxlen = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV, 3 do
  local id, attempt, for_job = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local j = load_job(p, id)
  local code = 'stale'
  if j and j.attempt == attempt and j.prio == '1' and j.cancel ~= '1' then
    local key = p .. 'job:' .. id
    local msg = 'preempted for ' .. for_job
    if j.state == '2' then
      redis.call('HINCRBY', key, 'preempts', 1)
      redis.call('HSET', key, 'preempted_at', now)
      requeue(p, id, j, msg .. ' before it was sent; requeued', now, maxlen)
      code = 'requeued'
    elseif j.state == '3' or j.state == '4' then
      redis.call('HINCRBY', key, 'preempts', 1)
      redis.call('HSET', key, 'state', '8', 'preempting', '1', 'preempted_at', now,
                 'updated', now, 'reason', msg)
      local rel = p .. 'site:' .. j.site .. ':releasing'
      local gpus = tonumber(j.r_gpus) or 0
      if gpus > 0 and j.gpu_type ~= '' then redis.call('HINCRBY', rel, 'gpu:' .. j.gpu_type, gpus) end
      redis.call('HINCRBY', rel, 'cpus', tonumber(j.r_cpus) or 0)
      redis.call('HINCRBY', rel, 'mem', tonumber(j.r_mem) or 0)
      redis.call('HINCRBY', rel, 'watts', tonumber(j.r_watts) or 0)
      redis.call('SREM', p .. 'surplus', id)
      redis.call('SADD', p .. 'site:' .. j.site .. ':cancels', id .. ':' .. attempt)
      emit(p, id, '8', attempt, j.site, msg .. '; stopping it', now, '', maxlen)
      redis.call('PUBLISH', p .. 'notify', j.site)
      code = 'ok'
    end
  end
  out[#out + 1] = code
end
return out
