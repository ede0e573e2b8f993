-- Take SCHEDULED jobs of one site for sending: mark them DISPATCHED and remember them as in
-- flight until the agent acknowledges. With resend=1, first return the site's in-flight jobs
-- again (after a reconnect or a dispatcher restart; the agent dedups on job id and attempt).
-- Also returns the site's cancels to deliver, so that one call gets all a site's stream carries.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 site id, 3 now (s), 4 events maxlen, 5 most jobs to take, 6 resend (0|1)
-- Returns: {jobs, cancels}: jobs a flat list, 5 per job: job id, attempt, spec bytes,
--          traceparent, GPU type; cancels the members of the site's cancels set ('job:attempt')
local p, site, now, maxlen, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local skey = p .. 'site:' .. site
local out = {}
local TAKE = {'state', 'attempt', 'site', 'gpu_type', 'spec', 'tp', 'h'}
local function add(id, j)
  out[#out + 1] = id
  out[#out + 1] = j.attempt
  out[#out + 1] = j.spec
  out[#out + 1] = j.tp
  out[#out + 1] = j.gpu_type
end
if ARGV[6] == '1' then
  for _, id in ipairs(redis.call('ZRANGE', skey .. ':inflight', 0, -1)) do
    local j = load_job(p, id, TAKE)
    if j and j.state == '3' and j.site == site then add(id, j)
    else redis.call('ZREM', skey .. ':inflight', id) end
  end
end
local ids = redis.call('ZRANGE', skey .. ':outbox', 0, limit - 1)
if #ids > 0 then
  add_members('ZREM', skey .. ':outbox', ids)
  local inflight = {}
  for _, id in ipairs(ids) do
    local j = load_job(p, id, TAKE)
    if j and j.state == '2' and j.site == site then
      redis.call('HSET', p .. 'job:' .. id, 'state', '3', 'updated', now,
                 'reason', 'sent to ' .. site,
                 'h', event(j, id, '3', j.attempt, site, 'dispatched to ' .. site, now, ''))
      inflight[#inflight + 1] = now
      inflight[#inflight + 1] = id
      add(id, j)
    end
  end
  add_members('ZADD', skey .. ':inflight', inflight)
  flush(p, maxlen)
end
return {out, redis.call('SMEMBERS', skey .. ':cancels')}
