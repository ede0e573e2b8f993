-- Declare a site LOST when its last heartbeat is older than lost_after (checked here, so a
-- heartbeat that lands first wins), and move its work on: attempts sent there are LOST and
-- their jobs requeued with attempt + 1 (not counted as failures); jobs not sent yet are
-- requeued; cancelled jobs are finished CANCELLED (the agent stops them itself once its lease
-- runs out). The site's state before is kept and comes back when it is heard from (seen.lua).
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 site id, 3 now (s), 4 events maxlen, 5 lost_after (s)
-- Returns: {code, jobs moved}: code 'missing', 'never' (never connected), 'alive' or 'lost'
local p, site, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local skey = p .. 'site:' .. site
if redis.call('EXISTS', skey) == 0 then return {'missing', 0} end
local hb = tonumber(redis.call('HGET', skey, 'hb'))
if not hb then return {'never', 0} end
local silent = tonumber(now) - hb
if silent <= tonumber(ARGV[5]) then return {'alive', 0} end
local state = redis.call('HGET', skey, 'state')
if state ~= '4' then
  redis.call('HSET', skey, 'state', '4', 'state_before_lost', state or '1', 'state_changed', now)
  redis.call('INCR', p .. 'sites:ver')
end
local why = string.format('site %s lost (silent for %.1fs)', site, silent)
local moved = 0
for _, id in ipairs(redis.call('SMEMBERS', skey .. ':active')) do
  local j = load_job(p, id)
  if j and j.site == site then
    local cur = j.state
    if cur == '2' then
      requeue(p, id, j, why .. ' before dispatch; requeued', now)
      moved = moved + 1
    elseif cur == '3' or cur == '4' or cur == '8' then
      if j.cancel == '1' then
        finish(p, id, j, '7', '', 'cancelled; ' .. why .. ', its agent stops the attempt', now)
      else
        event(j, id, '9', j.attempt, site, why .. '; attempt ' .. j.attempt .. ' lost', now, '')
        requeue(p, id, j, 'requeued: ' .. why, now)
      end
      moved = moved + 1
    end
  else
    redis.call('SREM', skey .. ':active', id)
  end
end
redis.call('PUBLISH', p .. 'wake', '1')
flush(p, maxlen)
return {'lost', moved}
