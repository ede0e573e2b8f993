-- Withdraw capacity from the federation: one offer of a site, or the whole site.
-- The caller read the site's registration and offers at policy version ARGV[3] and computed the
-- effective policy the site has after the withdrawal; if another write came in between, nothing
-- is written ('conflict': read again, retry).
-- One offer: it is deleted and the effective policy applied. The attempts of non-home tenants
-- at the site that it no longer covers are the withdrawn ones: those whose tenant the new
-- policy does not let in, then, while non-home tenants hold more GPUs than the new surplus
-- limit, the most recently started (not started yet counts as most recent).
-- The whole site (offer id ''): every offer is deleted, the site is CORDONED, then DRAINING
-- (both in the site's log; a site already DRAINING stays so), and every attempt there is
-- withdrawn.
-- A withdrawn attempt not sent yet (SCHEDULED) is requeued in any mode (nothing new starts).
-- A sent one (DISPATCHED, RUNNING) is, with mode 2 (REQUEUE), stopped and requeued with a new
-- attempt like a preemption (stop_attempt in _lib.lua: PREEMPTED, a cancel to the agent, never
-- a failure); otherwise (FINISH) it is left to finish and counted as still running. Attempts
-- with a cancel pending, or already being stopped (PREEMPTED), are left alone. Jobs are read and
-- changed in this one atomic step; a repeated withdrawal finds nothing more to stop.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 site id, 3 policy version read, 4 now (s), 5 events maxlen,
--       6 offer id ('' for the whole site), 7 mode (0 UNSPECIFIED, 1 FINISH, 2 REQUEUE),
--       8 reason ('' for none), 9 effective policy after (SitePolicy protobuf bytes),
--       10 pol:c (countries as ',NO,SE,'), 11 pol:t (tenants), 12 pol:surplus ('' no limit)
-- Returns: {code, requeued, still running}: code 'ok', 'missing', 'conflict' or 'no_offer'
local p, site, now, maxlen = ARGV[1], ARGV[2], ARGV[4], ARGV[5]
local offer, requeue_mode, reason = ARGV[6], ARGV[7] == '2', ARGV[8]
local pol_c, pol_t, limit = ARGV[10], ARGV[11], tonumber(ARGV[12])
local skey = p .. 'site:' .. site
local okey = skey .. ':offers'
if redis.call('EXISTS', skey) == 0 then return {'missing', 0, 0} end
if (redis.call('HGET', skey, 'pver') or '0') ~= ARGV[3] then return {'conflict', 0, 0} end
if offer ~= '' and redis.call('HEXISTS', okey, offer) == 0 then return {'no_offer', 0, 0} end
bump_policy_version(skey, ARGV[3])
local why = reason ~= '' and (': ' .. reason) or ''

local victims = {}
if offer ~= '' then
  redis.call('HDEL', okey, offer)
  site_log(p, site, redis.call('HGET', skey, 'state') or '', 'offer ' .. offer .. ' withdrawn' .. why, now)
  local kept, used = {}, 0
  for _, id in ipairs(redis.call('SMEMBERS', skey .. ':active')) do
    local j = load_job(p, id)
    if j and j.site == site and j.nonhome == '1' and j.cancel ~= '1'
        and (j.state == '2' or j.state == '3' or j.state == '4') then
      local country = redis.call('HGET', p .. 'tenant:' .. j.tenant, 'country') or ''
      local allowed = (pol_c == '' and pol_t == '') or holds(pol_t, j.tenant) or holds(pol_c, country)
      if allowed then
        local started = tonumber(j.started) or math.huge
        kept[#kept + 1] = {id = id, j = j, started = started}
        used = used + (tonumber(j.r_gpus) or 0)
      else
        victims[#victims + 1] = {id = id, j = j}
      end
    end
  end
  if limit and used > limit then
    table.sort(kept, function(a, b)
      if a.started ~= b.started then return a.started > b.started end
      return a.id > b.id
    end)
    for _, c in ipairs(kept) do
      if used <= limit then break end
      victims[#victims + 1] = c
      used = used - (tonumber(c.j.r_gpus) or 0)
    end
  end
else
  redis.call('DEL', okey)
  local state = redis.call('HGET', skey, 'state')
  local msg = 'withdrawn from the federation' .. why
  if state ~= '3' then
    if state ~= '2' then set_site_state(p, site, '2', now, msg .. '; cordoned') end
    set_site_state(p, site, '3', now, msg .. '; draining')
  end
  for _, id in ipairs(redis.call('SMEMBERS', skey .. ':active')) do
    local j = load_job(p, id)
    if j and j.site == site and j.cancel ~= '1'
        and (j.state == '2' or j.state == '3' or j.state == '4') then
      victims[#victims + 1] = {id = id, j = j}
    end
  end
end
if redis.call('EXISTS', okey) == 1 then
  redis.call('SADD', p .. 'offers', site)
else
  redis.call('SREM', p .. 'offers', site)
end
set_effective_policy(p, site, ARGV[9], pol_c, pol_t, ARGV[12])

local requeued, running = 0, 0
local what = offer ~= '' and ('offer ' .. offer) or 'the site'
for _, v in ipairs(victims) do
  if v.j.state == '2' or requeue_mode then
    stop_attempt(p, v.id, v.j, 'capacity withdrawn at ' .. site .. ' (' .. what .. ')' .. why,
                 now)
    requeued = requeued + 1
  else
    running = running + 1
  end
end
flush(p, maxlen)
return {'ok', requeued, running}
