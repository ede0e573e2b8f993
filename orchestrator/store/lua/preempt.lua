-- Preempt SURPLUS-class jobs to make room for higher-priority (or home-ecosystem) work. A
-- victim not yet sent goes straight back to its queue; a sent one becomes PREEMPTED, its agent is
-- told to stop it, and its capacity counts as "releasing" until the agent reports it ended; it
-- then goes back to PENDING with a new attempt. A preemption never counts as a failure
-- (stop_attempt in _lib.lua).
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 now (s), 3 events maxlen, then 3 per victim: job id, attempt, for job id
-- Returns: one code per victim: 'ok' (stopping), 'requeued' (was not sent yet) or 'stale'
local p, now, maxlen = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV, 3 do
  local id, attempt, for_job = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local j = load_job(p, id)
  local code = 'stale'
  if j and j.attempt == attempt and j.prio == '1' and j.cancel ~= '1' then
    code = stop_attempt(p, id, j, 'preempted for ' .. for_job, now)
  end
  out[#out + 1] = code
end
flush(p, maxlen)
return out
