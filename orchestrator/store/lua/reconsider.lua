-- Put every unschedulable job back in its queue so the scheduler looks at it again (after the
-- set of sites changed). The reason stays until a new decision replaces it.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix
-- Returns: number of jobs put back
local p = ARGV[1]
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
