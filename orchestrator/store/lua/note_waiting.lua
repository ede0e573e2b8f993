-- Record why pending jobs wait (shown by describe and jobs), only where the reason changed and
-- the job is still PENDING at that attempt.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, then 3 per job: job id, attempt, reason
-- Returns: number of jobs updated
local p = ARGV[1]
local n = 0
for i = 2, #ARGV, 3 do
  local key = p .. 'job:' .. ARGV[i]
  local v = redis.call('HMGET', key, 'state', 'attempt', 'reason', 'unsched')
  if v[1] == '1' and v[2] == ARGV[i + 1] and v[4] ~= '1' and v[3] ~= ARGV[i + 2] then
    redis.call('HSET', key, 'reason', ARGV[i + 2])
    n = n + 1
  end
end
return n
