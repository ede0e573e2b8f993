-- Take jobs that no registered site can ever run out of their queue and record why. They are
-- looked at again when the set of sites changes (reconsider.lua).
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 now (s), 3 events maxlen, then 3 per job: job id, attempt, reason
-- Returns: number of jobs marked
local p, now, maxlen = ARGV[1], ARGV[2], ARGV[3]
local n = 0
for i = 4, #ARGV, 3 do
  local id, attempt, reason = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local j = load_job(p, id)
  if j and j.state == '1' and j.attempt == attempt and j.unsched ~= '1' then
    local msg = 'unschedulable: ' .. reason
    local f = {'unsched', '1', 'reason', msg, 'updated', now}
    if j.reason ~= msg then
      f[#f + 1] = 'h'
      f[#f + 1] = event(j, id, '1', attempt, '', msg, now, '')
    end
    redis.call('HSET', p .. 'job:' .. id, unpack(f))
    redis.call('ZREM', p .. 'pending:' .. j.queue, id)
    redis.call('ZADD', p .. 'unsched', j.score, id)
    n = n + 1
  end
end
flush(p, maxlen)
return n
