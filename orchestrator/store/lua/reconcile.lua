-- Reconcile what a site's agent holds with what the store says, when a stream opens.
-- For each attempt the agent holds: 'keep' when it is the job's current attempt at this site
-- (DISPATCHED, RUNNING or PREEMPTED; pending cancels are sent again by the dispatcher), else
-- 'stop' when it is still running at the agent, or 'forget' when it has ended there.
-- Then the store's side: a current attempt at this site that the agent does not hold, and that
-- is not waiting in flight to be sent again, is gone: LOST and requeued (a PREEMPTED one just
-- requeued; a cancelled one finished CANCELLED).
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 site id, 3 now (s), 4 events maxlen, then 3 per held attempt:
--       job id, attempt, agent state (3 accepted, 4 running; 5, 6, 7 or 9 ended)
-- Returns: one code per held attempt, then the ids of the jobs requeued or finished
local p, site, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local skey = p .. 'site:' .. site
local out = {}
local held = {}
for i = 5, #ARGV, 3 do
  local id, attempt, st = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  held[id .. ':' .. attempt] = true
  local j = load_job(p, id)
  local current = j and j.site == site and j.attempt == attempt
                  and (j.state == '3' or j.state == '4' or j.state == '8')
  if current then
    out[#out + 1] = 'keep'
  elseif st == '3' or st == '4' then
    out[#out + 1] = 'stop'
  else
    out[#out + 1] = 'forget'
  end
end
for _, id in ipairs(redis.call('SMEMBERS', skey .. ':active')) do
  local j = load_job(p, id)
  if j and j.site == site and not held[id .. ':' .. j.attempt] then
    local cur = j.state
    local gone = cur == '4' or cur == '8'
    if cur == '3' and not redis.call('ZSCORE', skey .. ':inflight', id) then gone = true end
    if gone then
      local why = 'the agent at ' .. site .. ' does not hold attempt ' .. j.attempt
      if j.cancel == '1' then
        finish(p, id, j, '7', '', 'cancelled; ' .. why, now)
      elseif cur == '8' then
        requeue(p, id, j, 'preempted; ' .. why .. '; requeued', now)
      else
        event(j, id, '9', j.attempt, site, why .. '; attempt ' .. j.attempt .. ' lost', now, '')
        requeue(p, id, j, 'requeued: ' .. why, now)
      end
      out[#out + 1] = id
    end
  end
end
flush(p, maxlen)
return out
