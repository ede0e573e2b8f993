-- Cancel a job. Not yet sent to a site: cancelled at once. Sent: the cancel is recorded and
-- queued for the site's dispatcher; the job becomes CANCELLED when the agent reports it ended.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 job id, 3 now (s), 4 events maxlen, 5 reason
-- A PREEMPTED job (its agent is stopping it) is cancelled the same way as a running one.
-- Returns: {code, state}: 'missing'; 'terminal' (already finished; state is which);
--          'cancelled' (done now); 'requested' (waiting for the agent)
local p, id, now, maxlen, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local j = load_job(p, id)
if not j then return {'missing', '0'} end
local cur = j.state
if is_terminal(cur) then return {'terminal', cur} end
local msg = 'cancelled' .. (reason ~= '' and (': ' .. reason) or '')
if cur == '1' then
  redis.call('ZREM', p .. 'pending:' .. j.queue, id)
  redis.call('ZREM', p .. 'unsched', id)
  finish(p, id, j, '7', '', msg, now)
  flush(p, maxlen)
  return {'cancelled', '7'}
end
if cur == '2' then
  finish(p, id, j, '7', '', msg, now)
  flush(p, maxlen)
  return {'cancelled', '7'}
end
if j.cancel ~= '1' then
  local requested = 'cancel requested' .. (reason ~= '' and (': ' .. reason) or '')
  redis.call('HSET', p .. 'job:' .. id, 'cancel', '1', 'updated', now,
             'h', event(j, id, cur, j.attempt, j.site, requested, now, ''))
  redis.call('SADD', p .. 'site:' .. j.site .. ':cancels', id .. ':' .. j.attempt)
  redis.call('PUBLISH', p .. 'notify', j.site)
  flush(p, maxlen)
end
return {'requested', cur}
