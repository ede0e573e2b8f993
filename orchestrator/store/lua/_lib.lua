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

-- An attempt that ran (RUNNING from 'started' until now) adds GPU-seconds (GPUs x seconds) and
-- joules (its watts x seconds) to its tenant's usage of the site.
local function add_usage(p, id, j, now)
  local started = tonumber(redis.call('HGET', p .. 'job:' .. id, 'started'))
  if not started then return end
  local seconds = (tonumber(now) or started) - started
  if seconds <= 0 then return end
  local gpus, watts = tonumber(j.r_gpus) or 0, tonumber(j.r_watts) or 0
  if gpus <= 0 and watts <= 0 then return end
  local usage = p .. 'site:' .. j.site .. ':usage'
  redis.call('HINCRBYFLOAT', usage, 'gs:' .. j.tenant, gpus * seconds)
  redis.call('HINCRBYFLOAT', usage, 'j:' .. j.tenant, watts * seconds)
end

-- Give back the capacity a placed job holds at its site (and in its tenant's usage) and drop
-- it from the site's sets; an attempt that ran adds to the site's usage record (add_usage).
local function release(p, id, j, now)
  local site = j.site
  if site == '' then return end
  add_usage(p, id, j, now)
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
  release(p, id, j, now)
  local key = p .. 'job:' .. id
  redis.call('HSET', key, 'state', state, 'updated', now, 'finished', now, 'reason', msg)
  if exit_code ~= '' then redis.call('HSET', key, 'exit_code', exit_code) end
  emit(p, id, state, j.attempt, j.site, msg, now, exit_code, maxlen)
end

-- Put a placed job back in its queue with a new attempt.
local function requeue(p, id, j, msg, now, maxlen)
  release(p, id, j, now)
  local attempt = tostring((tonumber(j.attempt) or 0) + 1)
  redis.call('HSET', p .. 'job:' .. id, 'state', '1', 'attempt', attempt, 'site', '',
             'gpu_type', '', 'updated', now, 'reason', msg, 'cancel', '0')
  redis.call('HDEL', p .. 'job:' .. id, 'started')
  redis.call('ZADD', p .. 'pending:' .. j.queue, j.score, id)
  emit(p, id, '1', attempt, '', msg, now, '', maxlen)
  redis.call('PUBLISH', p .. 'wake', '1')
end

-- Stop a placed attempt so that its job runs elsewhere, never counted as a failure (preemption,
-- withdrawn capacity). Not sent yet (SCHEDULED): requeued now. Sent (DISPATCHED, RUNNING): it
-- becomes PREEMPTED, its agent is told to stop it, and its capacity counts as "releasing" until
-- the agent reports it ended; it then goes back to PENDING with a new attempt (status.lua).
-- The caller has checked the attempt and that no cancel is pending.
-- Returns 'requeued', 'ok' (stopping) or 'stale' (not in a state that can be stopped).
local function stop_attempt(p, id, j, msg, now, maxlen)
  local key = p .. 'job:' .. id
  if j.state == '2' then
    redis.call('HINCRBY', key, 'preempts', 1)
    redis.call('HSET', key, 'preempted_at', now)
    requeue(p, id, j, msg .. ' before it was sent; requeued', now, maxlen)
    return 'requeued'
  end
  if j.state ~= '3' and j.state ~= '4' then return 'stale' end
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
  redis.call('SADD', p .. 'site:' .. j.site .. ':cancels', id .. ':' .. j.attempt)
  emit(p, id, '8', j.attempt, j.site, msg .. '; stopping it', now, '', maxlen)
  redis.call('PUBLISH', p .. 'notify', j.site)
  return 'ok'
end

-- Put every unschedulable job back in its queue so the scheduler looks at it again (after the
-- set of sites, or what they accept, changed). Returns how many.
local function reconsider_all(p)
  local ids = redis.call('ZRANGE', p .. 'unsched', 0, -1)
  for _, id in ipairs(ids) do
    local j = load_job(p, id)
    if j and j.state == '1' then
      redis.call('HSET', p .. 'job:' .. id, 'unsched', '0')
      redis.call('ZADD', p .. 'pending:' .. j.queue, j.score, id)
    end
    redis.call('ZREM', p .. 'unsched', id)
  end
  if #ids > 0 then redis.call('PUBLISH', p .. 'wake', '1') end
  return #ids
end

-- Append one entry to a site's log (capped): the state it is in, a message, the time.
local function site_log(p, site, state, msg, now)
  redis.call('XADD', p .. 'site:' .. site .. ':log', 'MAXLEN', '~', 1000, '*',
             'state', state, 'msg', msg, 't', now)
end

-- Set a site's administrative state (an operator's or owner's word: it wins over a return from
-- LOST), announce it, and record the transition in the site's log.
local function set_site_state(p, site, state, now, msg)
  local skey = p .. 'site:' .. site
  redis.call('HSET', skey, 'state', state, 'state_changed', now)
  redis.call('HDEL', skey, 'state_before_lost')
  redis.call('INCR', p .. 'sites:ver')
  redis.call('PUBLISH', p .. 'wake', '1')
  site_log(p, site, state, msg, now)
end

-- Write a site's effective policy: its bytes (eff) and the fields commit.lua checks (pol:c
-- countries, pol:t tenants, pol:surplus GPUs; '' for no surplus limit). Returns whether it
-- changed; a change is announced (sites:ver, wake) and unschedulable jobs are looked at again.
local function set_effective_policy(p, site, eff, pol_c, pol_t, pol_surplus)
  local skey = p .. 'site:' .. site
  local changed = redis.call('HGET', skey, 'eff') ~= eff
  redis.call('HSET', skey, 'eff', eff, 'pol:c', pol_c, 'pol:t', pol_t)
  if pol_surplus ~= '' then
    redis.call('HSET', skey, 'pol:surplus', pol_surplus)
  else
    redis.call('HDEL', skey, 'pol:surplus')
  end
  if changed then
    redis.call('INCR', p .. 'sites:ver')
    reconsider_all(p)
    redis.call('PUBLISH', p .. 'wake', '1')
  end
  return changed
end

-- Check a site's policy version against the one the caller read, and bump it. The version
-- changes with every write to the site's registration, base policy or offers, so a policy the
-- caller computed from what it read is never applied over a newer change. False on a mismatch.
local function bump_policy_version(skey, expected)
  local cur = redis.call('HGET', skey, 'pver') or '0'
  if cur ~= expected then return false end
  redis.call('HSET', skey, 'pver', tostring((tonumber(cur) or 0) + 1))
  return true
end
