-- Record the agent's answers to dispatched assignments.
-- An accepted one leaves the in-flight set. A refused one is failed when the refusal is about
-- residency (the scheduler must never have sent it; retrying elsewhere would hide the bug),
-- else requeued with a new attempt.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 site id, 3 now (s), 4 events maxlen, then 4 per ack:
--       job id, attempt, accepted (0|1), reason
-- Returns: one code per ack: 'ok', 'failed', 'requeued' or 'stale'
local p, site, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out = {}
BUFFERED = true
local ACK = {'state', 'attempt', 'site', 'cancel'}
for i = 5, #ARGV, 4 do
  local id, attempt, accepted, reason = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local j = load_job(p, id, ACK)
  local code = 'stale'
  if j and j.site == site and j.attempt == attempt then
    if accepted == '1' then
      zrem(p .. 'site:' .. site .. ':inflight', id)
      code = 'ok'
    elseif j.state == '3' or j.state == '8' then
      load_rest(p, id, j)
      local msg = 'refused by ' .. site .. ': ' .. reason
      if j.state == '8' and j.cancel ~= '1' then
        requeue(p, id, j, 'preempted before it started; requeued', now)
        code = 'requeued'
      elseif j.cancel == '1' or string.sub(reason, 1, 9) == 'cancelled' then
        finish(p, id, j, '7', '', msg, now)
        code = 'failed'
      elseif string.sub(reason, 1, 9) == 'residency' then
        finish(p, id, j, '6', '', msg, now)
        code = 'failed'
      else
        requeue(p, id, j, msg, now)
        code = 'requeued'
      end
    end
  end
  out[#out + 1] = code
end
flush(p, maxlen)
return out
