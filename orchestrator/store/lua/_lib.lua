-- Shared helpers, prepended to every script by orchestrator/store/scripts.py.
-- Every script takes the key prefix as ARGV[1] and builds keys with the templates of
-- orchestrator/store/keys.py (single-shard Redis; not written for Redis Cluster).
-- Job states (orchestrator.v1.JobState): 1 PENDING, 2 SCHEDULED, 3 DISPATCHED, 4 RUNNING,
-- 5 SUCCEEDED, 6 FAILED, 7 CANCELLED, 8 PREEMPTED, 9 LOST. Site states: 1 ACTIVE,
-- 2 CORDONED, 3 DRAINING, 4 LOST.

local JOB_FIELDS = {'state', 'attempt', 'site', 'gpu_type', 'r_gpus', 'r_cpus', 'r_mem',
                    'max_attempts', 'cancel', 'queue', 'score', 'unsched', 'reason', 'tenant',
                    'prio', 'allowed', 'excl', 'r_watts', 'nonhome', 'jur', 'preempting',
                    'fails', 'started', 'h'}

-- A job record holds only the fields that differ from their defaults: a missing field reads
-- as '' (load_job), which every script treats as the field's zero ('0' counters and flags,
-- '' names). New jobs are written with about half the fields, which keeps a queued job's
-- record small (see keys.py).

-- Note: decrements are written 0 - x, never -x: Lua's -0 reaches Redis as "-0", which
-- HINCRBY rejects.

-- Whether a ",A,B," list holds item (an empty list holds nothing).
local function holds(list, item)
  return list ~= '' and string.find(list, ',' .. item .. ',', 1, true) ~= nil
end

-- The job's status fields as a table, or nil when there is no such job. names: the fields
-- to read (default JOB_FIELDS; the first must be 'state'). Hot paths read only what they use:
-- a field costs a scan of the record (a listpack) in HMGET, 24 of them some 6 us per job.
local function load_job(p, id, names)
  names = names or JOB_FIELDS
  local v = redis.call('HMGET', p .. 'job:' .. id, unpack(names))
  if not v[1] then return nil end
  local j = {}
  for i, name in ipairs(names) do j[name] = v[i] or '' end
  return j
end

-- What release, requeue and finish read of a job (with state, attempt, site, cancel and h).
local RELEASE_FIELDS = {'gpu_type', 'r_gpus', 'r_cpus', 'r_mem', 'r_watts', 'nonhome', 'jur',
                        'preempting', 'prio', 'tenant', 'started', 'queue', 'score', 'fails',
                        'max_attempts'}

-- Read the rest of JOB_FIELDS (or of names) into j, loaded with fewer names, before a full
-- transition.
local function load_rest(p, id, j, names_wanted)
  local names = {}
  for _, name in ipairs(names_wanted or JOB_FIELDS) do
    if j[name] == nil then names[#names + 1] = name end
  end
  if #names == 0 then return end
  local v = redis.call('HMGET', p .. 'job:' .. id, unpack(names))
  for i, name in ipairs(names) do j[name] = v[i] or '' end
end

local function is_terminal(state)
  return state == '5' or state == '6' or state == '7'
end

-- ---------------------------------------------------------------------------------- events
-- A job's history is the field 'h' of its record: entries in order, each
--   state US attempt US site US time US exit code US message RS      (US = \31, RS = \30)
-- (a message's control characters become spaces). The store reads it back as the job's
-- events; an event's id is its place in the history (1, 2, ...). Keeping the history in the
-- record costs no command of its own: the new value goes in the HSET that makes the change.
--
-- Every event also goes to the global stream {p}events, buffered during a script and written
-- by flush(): one entry per run of up to EVENT_GROUP events that share state, site, message
-- and exit code, with 'job' and 'attempt' holding the ids and attempts separated by spaces
-- (one job: exactly a job's event). A script that emits calls flush() before it returns.

local EVENT_GROUP = 100
local EVENTS = {}        -- group key -> {state, site, msg, now, exit, ids, attempts}
local EVENT_ORDER = {}   -- group keys in first-seen order

-- Messages with their control characters made spaces, per script run: a batch's jobs share
-- a few messages ('dispatched to X'), and a pattern match per event costs more than a lookup.
local CLEAN = {}

local function history_entry(state, attempt, site, msg, now, exit_code)
  local clean = CLEAN[msg]
  if not clean then
    clean = string.gsub(msg, '%c', ' ')
    CLEAN[msg] = clean
  end
  msg = clean
  return state .. '\31' .. attempt .. '\31' .. site .. '\31' .. now .. '\31' .. (exit_code or '')
    .. '\31' .. msg .. '\30'
end

-- Record one event: buffer it for the global stream and return the job's new history (for
-- the caller's own HSET). j: the loaded job (its 'h' is updated in place) or nil for a new one.
local function event(j, id, state, attempt, site, msg, now, exit_code)
  exit_code = exit_code or ''
  local key = state .. '\31' .. site .. '\31' .. exit_code .. '\31' .. msg
  local group = EVENTS[key]
  if not group then
    group = {state, site, msg, now, exit_code, {}, {}}
    EVENTS[key] = group
    EVENT_ORDER[#EVENT_ORDER + 1] = key
  end
  group[6][#group[6] + 1] = id
  group[7][#group[7] + 1] = attempt
  local h = ((j and j.h) or '') .. history_entry(state, attempt, site, msg, now, exit_code)
  if j then j.h = h end
  return h
end

local function flush_events(p, maxlen)
  for _, key in ipairs(EVENT_ORDER) do
    local g = EVENTS[key]
    for i = 1, #g[6], EVENT_GROUP do
      local last = math.min(i + EVENT_GROUP - 1, #g[6])
      local f = {'job', table.concat(g[6], ' ', i, last), 'state', g[1],
                 'attempt', table.concat(g[7], ' ', i, last), 'site', g[2], 'msg', g[3], 't', g[4]}
      if g[5] ~= '' then
        f[#f + 1] = 'exit'
        f[#f + 1] = g[5]
      end
      redis.call('XADD', p .. 'events', 'MAXLEN', '~', maxlen, '*', unpack(f))
    end
  end
  EVENTS, EVENT_ORDER = {}, {}
end

-- ------------------------------------------------------------------- counters and sets
-- Releasing capacity touches shared counters (a site's and a tenant's use) and sets. Scripts
-- that finish many jobs (status, ack) set BUFFERED = true: the changes are summed per key and
-- field and written once by flush(), so a batch of 1,000 finished jobs costs a few dozen
-- commands instead of some 15,000. Others write at once, for scripts that read a counter
-- after changing it.

local BUFFERED = false
local INCR, INCR_FLOAT, SREMS, ZREMS, WAKE = {}, {}, {}, {}, false

-- One command per at most 4,000 members (Lua's unpack is limited to 8,000 values).
local function add_members(cmd, key, members)
  for i = 1, #members, 4000 do
    redis.call(cmd, key, unpack(members, i, math.min(i + 3999, #members)))
  end
end

-- The table under key in t, made if missing.
local function slot(t, key)
  local v = t[key]
  if not v then
    v = {}
    t[key] = v
  end
  return v
end

local function add_to(sums, cmd, key, field, n)
  if not BUFFERED then
    redis.call(cmd, key, field, n)
    return
  end
  local fields = slot(sums, key)
  fields[field] = (fields[field] or 0) + n
end

local function incr(key, field, n)
  if n ~= 0 then add_to(INCR, 'HINCRBY', key, field, n) end
end

local function incr_float(key, field, x) add_to(INCR_FLOAT, 'HINCRBYFLOAT', key, field, x) end

local function remove(buffer, cmd, key, member)
  if not BUFFERED then
    redis.call(cmd, key, member)
    return
  end
  local members = slot(buffer, key)
  members[#members + 1] = member
end

local function srem(key, member) remove(SREMS, 'SREM', key, member) end
local function zrem(key, member) remove(ZREMS, 'ZREM', key, member) end

local function wake(p)
  if BUFFERED then WAKE = true else redis.call('PUBLISH', p .. 'wake', '1') end
end

-- Write what was buffered: events, counters, set removals, the scheduler's wake-up.
local function flush(p, maxlen)
  flush_events(p, maxlen)
  for _, pair in ipairs({{INCR, 'HINCRBY'}, {INCR_FLOAT, 'HINCRBYFLOAT'}}) do
    for key, fields in pairs(pair[1]) do
      for field, n in pairs(fields) do
        if n ~= 0 then redis.call(pair[2], key, field, n) end
      end
    end
  end
  for key, members in pairs(SREMS) do add_members('SREM', key, members) end
  for key, members in pairs(ZREMS) do add_members('ZREM', key, members) end
  if WAKE then redis.call('PUBLISH', p .. 'wake', '1') end
  INCR, INCR_FLOAT, SREMS, ZREMS, WAKE = {}, {}, {}, {}, false
end

-- An attempt that ran (RUNNING from 'started' until now) adds GPU-seconds (GPUs x seconds) and
-- joules (its watts x seconds) to its tenant's usage of the site.
local function add_usage(p, j, now)
  local started = tonumber(j.started)
  if not started then return end
  local seconds = (tonumber(now) or started) - started
  if seconds <= 0 then return end
  local gpus, watts = tonumber(j.r_gpus) or 0, tonumber(j.r_watts) or 0
  if gpus <= 0 and watts <= 0 then return end
  local usage = p .. 'site:' .. j.site .. ':usage'
  incr_float(usage, 'gs:' .. j.tenant, gpus * seconds)
  incr_float(usage, 'j:' .. j.tenant, watts * seconds)
end

-- The fields a released job's record gets (with the caller's own, in one HSET).
local RELEASED = {'preempting', '0', 'nonhome', '0', 'r_watts', '0', 'jur', ''}

-- Give back the capacity a placed job holds at its site (and in its tenant's usage) and drop
-- it from the site's sets; an attempt that ran adds to the site's usage record (add_usage).
-- A caller that puts the job back in its queue writes RELEASED into its record (requeue).
local function release(p, id, j, now)
  local site = j.site
  if site == '' then return end
  add_usage(p, j, now)
  local used = p .. 'site:' .. site .. ':used'
  local gpus = tonumber(j.r_gpus) or 0
  local cpus, mem = tonumber(j.r_cpus) or 0, tonumber(j.r_mem) or 0
  local watts = tonumber(j.r_watts) or 0
  if gpus > 0 and j.gpu_type ~= '' then incr(used, 'gpu:' .. j.gpu_type, 0 - gpus) end
  incr(used, 'cpus', 0 - cpus)
  incr(used, 'mem', 0 - mem)
  incr(used, 'watts', 0 - watts)
  if j.nonhome == '1' then incr(used, 'gpu_nonhome', 0 - gpus) end
  local tused = p .. 'tenant:' .. j.tenant .. ':used'
  incr(tused, 'gpus', 0 - gpus)
  if j.jur ~= '' then incr(tused, 'gpus:' .. j.jur, 0 - gpus) end
  incr(tused, 'cpus', 0 - cpus)
  incr(tused, 'mem', 0 - mem)
  if j.preempting == '1' then
    local rel = p .. 'site:' .. site .. ':releasing'
    if gpus > 0 and j.gpu_type ~= '' then incr(rel, 'gpu:' .. j.gpu_type, 0 - gpus) end
    incr(rel, 'cpus', 0 - cpus)
    incr(rel, 'mem', 0 - mem)
    incr(rel, 'watts', 0 - watts)
  end
  if j.prio == '1' then srem(p .. 'surplus', id) end
  srem(p .. 'site:' .. site .. ':active', id)
  zrem(p .. 'site:' .. site .. ':outbox', id)
  zrem(p .. 'site:' .. site .. ':inflight', id)
  srem(p .. 'site:' .. site .. ':cancels', id .. ':' .. j.attempt)
  wake(p)  -- capacity came free: the scheduler may place more
end

-- HSET key, then the fields of each table in turn.
local function hset(key, ...)
  local args = {}
  for _, t in ipairs({...}) do
    for _, v in ipairs(t) do args[#args + 1] = v end
  end
  redis.call('HSET', key, unpack(args))
end

-- Move a job to a terminal state (5, 6 or 7). Its record keeps the last attempt's placement
-- fields (RELEASED is for a job placed again): nothing reads them once it is terminal.
local function finish(p, id, j, state, exit_code, msg, now)
  release(p, id, j, now)
  local f = {'state', state, 'updated', now, 'finished', now, 'reason', msg,
             'h', event(j, id, state, j.attempt, j.site, msg, now, exit_code)}
  if exit_code ~= '' then
    f[#f + 1] = 'exit_code'
    f[#f + 1] = exit_code
  end
  if j.write_started then  -- its RUNNING came in the same call (status.lua) and is not written
    f[#f + 1] = 'started'
    f[#f + 1] = j.started
  end
  redis.call('HSET', p .. 'job:' .. id, unpack(f))
end

-- Put a placed job back in its queue with a new attempt.
local function requeue(p, id, j, msg, now)
  release(p, id, j, now)
  local attempt = tostring((tonumber(j.attempt) or 0) + 1)
  local key = p .. 'job:' .. id
  hset(key, {'state', '1', 'attempt', attempt, 'site', '', 'gpu_type', '', 'updated', now,
             'reason', msg, 'cancel', '0', 'h', event(j, id, '1', attempt, '', msg, now, '')},
       j.site ~= '' and RELEASED or {})
  redis.call('HDEL', key, 'started')
  redis.call('ZADD', p .. 'pending:' .. j.queue, j.score, id)
  wake(p)
end

-- Stop a placed attempt so that its job runs elsewhere, never counted as a failure (preemption,
-- withdrawn capacity). Not sent yet (SCHEDULED): requeued now. Sent (DISPATCHED, RUNNING): it
-- becomes PREEMPTED, its agent is told to stop it, and its capacity counts as "releasing" until
-- the agent reports it ended; it then goes back to PENDING with a new attempt (status.lua).
-- The caller has checked the attempt and that no cancel is pending.
-- Returns 'requeued', 'ok' (stopping) or 'stale' (not in a state that can be stopped).
local function stop_attempt(p, id, j, msg, now)
  local key = p .. 'job:' .. id
  if j.state == '2' then
    redis.call('HINCRBY', key, 'preempts', 1)
    redis.call('HSET', key, 'preempted_at', now)
    requeue(p, id, j, msg .. ' before it was sent; requeued', now)
    return 'requeued'
  end
  if j.state ~= '3' and j.state ~= '4' then return 'stale' end
  redis.call('HINCRBY', key, 'preempts', 1)
  local stopping = msg .. '; stopping it'
  redis.call('HSET', key, 'state', '8', 'preempting', '1', 'preempted_at', now,
             'updated', now, 'reason', msg,
             'h', event(j, id, '8', j.attempt, j.site, stopping, now, ''))
  local rel = p .. 'site:' .. j.site .. ':releasing'
  local gpus = tonumber(j.r_gpus) or 0
  if gpus > 0 and j.gpu_type ~= '' then incr(rel, 'gpu:' .. j.gpu_type, gpus) end
  incr(rel, 'cpus', tonumber(j.r_cpus) or 0)
  incr(rel, 'mem', tonumber(j.r_mem) or 0)
  incr(rel, 'watts', tonumber(j.r_watts) or 0)
  if j.prio == '1' then srem(p .. 'surplus', id) end
  redis.call('SADD', p .. 'site:' .. j.site .. ':cancels', id .. ':' .. j.attempt)
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

-- Append to out what site_records reads of a site, four items: its hash (flat field, value
-- list), its used counters (flat), how many jobs are active there, its releasing counters
-- (flat). Used by site_rows.lua and cycle_view.lua.
local function add_site_row(out, p, site)
  local skey = p .. 'site:' .. site
  out[#out + 1] = redis.call('HGETALL', skey)
  out[#out + 1] = redis.call('HGETALL', skey .. ':used')
  out[#out + 1] = redis.call('SCARD', skey .. ':active')
  out[#out + 1] = redis.call('HGETALL', skey .. ':releasing')
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
