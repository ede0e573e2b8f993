-- Read what the scheduler keeps of pending jobs, in one call (a pipeline of HMGETs costs the
-- client far more per job than the server).
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, then job ids
-- Returns: flat list, 3 per job, in order: spec bytes, traceparent, attempt; a job that does
--          not exist or is not PENDING gives false, false, false
local p = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local v = redis.call('HMGET', p .. 'job:' .. ARGV[i], 'state', 'spec', 'tp', 'attempt')
  if v[1] == '1' and v[2] then
    out[#out + 1] = v[2]
    out[#out + 1] = v[3] or ''
    out[#out + 1] = v[4]
  else
    out[#out + 1] = false
    out[#out + 1] = false
    out[#out + 1] = false
  end
end
return out
