-- Shared helpers, prepended to every script by orchestrator/store/scripts.py.
-- Every script takes the key prefix as ARGV[1] and builds keys with the templates of
-- orchestrator/store/keys.py (single-shard Redis; not written for Redis Cluster).
-- Job states (orchestrator.v1.JobState): 1 PENDING, 2 SCHEDULED, 3 DISPATCHED, 4 RUNNING,
-- 5 SUCCEEDED, 6 FAILED, 7 CANCELLED, 8 PREEMPTED, 9 LOST. Site states: 1 ACTIVE,
-- 2 CORDONED, 3 DRAINING, 4 LOST.

local JOB_FIELDS = {'state', 'attempt', 'site', 'gpu_type', 'r_gpus', 'r_cpus', 'r_mem',
                    'max_attempts', 'cancel', 'queue', 'score', 'unsched', 'reason', 'tenant',
                    'prio', 'allowed', 'excl', 'r_watts', 'nonhome', 'jur', 'preempting',
                    'fails'}

-- Note: decrements are written 0 - x, never -x: Lua's -0 reaches Redis as "-0", which
-- HINCRBY rejects.

-- Whether a ",A,B," list holds item (an empty list holds nothing).
local function holds(list, item)
  return list ~= '' and string.find(list, ',' .. item .. ',', 1, true) ~= nil
end

-- The job's status fields as a table, or nil when there is no such job.
local function load_job(p, id)
  local v = redis.call('HMGET', p .. 'job:' .. id, unpack(JOB_FIELDS))
  if not v[1] then return nil end
  local j = {}
  for i, name in ipairs(JOB_FIELDS) do j[name] = v[i] or '' end
  return j
end

local function is_terminal(state)
  return state == '5' or state == '6' or state == '7'
end

-- Append one event to the job's stream and to the global stream (capped at maxlen).
local function emit(p, id, state, attempt, site, msg, now, exit_code, maxlen)
  local f = {'job', id, 'state', state, 'attempt', attempt, 'site', site, 'msg', msg, 't', now}
  if exit_code ~= nil and exit_code ~= '' then
    f[#f + 1] = 'exit'
    f[#f + 1] = exit_code
  end
  redis.call('XADD', p .. 'job:' .. id .. ':ev', '*', unpack(f))
  redis.call('XADD', p .. 'events', 'MAXLEN', '~', maxlen, '*', unpack(f))
end

-- Give back the capacity a placed job holds at its site (and in its tenant's usage) and drop
-- it from the site's sets.
local function release(p, id, j)
  local site = j.site
  if site == '' then return end
  local used = p .. 'site:' .. site .. ':used'
  local gpus = tonumber(j.r_gpus) or 0
  local cpus, mem = tonumber(j.r_cpus) or 0, tonumber(j.r_mem) or 0
  local watts = tonumber(j.r_watts) or 0
  if gpus > 0 and j.gpu_type ~= '' then
    redis.call('HINCRBY', used, 'gpu:' .. j.gpu_type, 0 - gpus)
  end
  redis.call('HINCRBY', used, 'cpus', 0 - cpus)
  redis.call('HINCRBY', used, 'mem', 0 - mem)
  redis.call('HINCRBY', used, 'watts', 0 - watts)
  if j.nonhome == '1' then redis.call('HINCRBY', used, 'gpu_nonhome', 0 - gpus) end
  local tused = p .. 'tenant:' .. j.tenant .. ':used'
  redis.call('HINCRBY', tused, 'gpus', 0 - gpus)
  if j.jur ~= '' then redis.call('HINCRBY', tused, 'gpus:' .. j.jur, 0 - gpus) end
  redis.call('HINCRBY', tused, 'cpus', 0 - cpus)
  redis.call('HINCRBY', tused, 'mem', 0 - mem)
  if j.preempting == '1' then
    local rel = p .. 'site:' .. site .. ':releasing'
    if gpus > 0 and j.gpu_type ~= '' then redis.call('HINCRBY', rel, 'gpu:' .. j.gpu_type, 0 - gpus) end
    redis.call('HINCRBY', rel, 'cpus', 0 - cpus)
    redis.call('HINCRBY', rel, 'mem', 0 - mem)
    redis.call('HINCRBY', rel, 'watts', 0 - watts)
  end
  redis.call('HSET', p .. 'job:' .. id, 'preempting', '0', 'nonhome', '0', 'r_watts', '0', 'jur', '')
  redis.call('SREM', p .. 'surplus', id)
  redis.call('SREM', p .. 'site:' .. site .. ':active', id)
  redis.call('ZREM', p .. 'site:' .. site .. ':outbox', id)
  redis.call('ZREM', p .. 'site:' .. site .. ':inflight', id)
  redis.call('SREM', p .. 'site:' .. site .. ':cancels', id .. ':' .. j.attempt)
  redis.call('PUBLISH', p .. 'wake', '1')  -- capacity came free: the scheduler may place more
end

-- Move a job to a terminal state (5, 6 or 7).
local function finish(p, id, j, state, exit_code, msg, now, maxlen)
  release(p, id, j)
  local key = p .. 'job:' .. id
  redis.call('HSET', key, 'state', state, 'updated', now, 'finished', now, 'reason', msg)
  if exit_code ~= '' then redis.call('HSET', key, 'exit_code', exit_code) end
  emit(p, id, state, j.attempt, j.site, msg, now, exit_code, maxlen)
end

-- Put a placed job back in its queue with a new attempt.
local function requeue(p, id, j, msg, now, maxlen)
  release(p, id, j)
  local attempt = tostring((tonumber(j.attempt) or 0) + 1)
  redis.call('HSET', p .. 'job:' .. id, 'state', '1', 'attempt', attempt, 'site', '',
             'gpu_type', '', 'updated', now, 'reason', msg, 'cancel', '0')
  redis.call('HDEL', p .. 'job:' .. id, 'started')
  redis.call('ZADD', p .. 'pending:' .. j.queue, j.score, id)
  emit(p, id, '1', attempt, '', msg, now, '', maxlen)
  redis.call('PUBLISH', p .. 'wake', '1')
end
