-- Apply a batch of status updates reported by a site's agent. An update for another site or
-- another attempt than the job's current one is stale and changes nothing. A requested cancel
-- wins over any late terminal report. A FAILED attempt is requeued while the job's own failures
-- stay under its max attempts. A PREEMPTED attempt that ended is requeued (not a failure), and
-- so is a LOST one (its agent stopped it when its lease ran out).
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 site id, 3 now (s), 4 events maxlen, then 5 per update:
--       job id, attempt, new state (4 RUNNING, 5 SUCCEEDED, 6 FAILED, 7 CANCELLED, 9 LOST),
--       exit code ('' for none), message;
--       or an attempt's RUNNING and its end reported together (a short job): new state 45, 46
--       or 47, and the two messages separated by RS (\30; the first holds none). That is
--       the two updates in turn, with one read and one write of the record.
-- Returns: one code per update: 'ok', 'retry', 'dup' or 'stale' (for a pair, the two codes
--          separated by a space)
local p, site, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out = {}
BUFFERED = true
local STATUS = {'state', 'attempt', 'site', 'cancel', 'h'}
-- An end (or a pair, or LOST) releases the job: its status and release fields in one read
-- (the branches below that finish or requeue rely on it).
local STATUS_END = {unpack(STATUS)}
for _, name in ipairs(RELEASE_FIELDS) do STATUS_END[#STATUS_END + 1] = name end
for i = 5, #ARGV, 5 do
  local id, attempt, new, exit_code, msg = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local j = load_job(p, id, (#new == 2 or new ~= '4') and STATUS_END or STATUS)
  local code = 'stale'
  local ran = nil  -- for a pair: the RUNNING update's code, and its end's becomes code
  if #new == 2 then
    local sep = string.find(msg, '\30', 1, true)
    local running_msg = string.sub(msg, 1, sep - 1)
    new, msg, ran = string.sub(new, 2), string.sub(msg, sep + 1), 'stale'
    if j and j.site == site and j.attempt == attempt then
      if j.state == '3' then
        -- RUNNING, kept in j: the end's write below carries it (finish writes 'started'; a
        -- requeue drops it), and its history entry
        event(j, id, '4', attempt, site, running_msg ~= '' and running_msg or 'running', now, '')
        j.state, j.started, j.write_started = '4', now, true
        zrem(p .. 'site:' .. site .. ':inflight', id)
        ran = 'ok'
      elseif j.state == '4' or j.state == '8' then
        ran = 'dup'
      end
    end
  end
  if j and j.site == site and j.attempt == attempt then
    local cur = j.state
    if new == '4' then
      if cur == '3' then
        redis.call('HSET', p .. 'job:' .. id, 'state', '4', 'updated', now, 'started', now,
                   'reason', 'running on ' .. site,
                   'h', event(j, id, '4', attempt, site, msg ~= '' and msg or 'running', now, ''))
        zrem(p .. 'site:' .. site .. ':inflight', id)
        code = 'ok'
      elseif cur == '4' or cur == '8' then
        code = 'dup'
      end
    elseif new == '9' and (cur == '3' or cur == '4' or cur == '8') then
      -- the agent stopped the attempt itself (its lease ran out): not the job's failure
      if j.cancel == '1' then
        finish(p, id, j, '7', exit_code, 'cancelled (' .. msg .. ')', now)
      else
        event(j, id, '9', attempt, site, msg, now, exit_code)
        requeue(p, id, j, 'attempt ' .. attempt .. ' lost (' .. msg .. '); requeued', now)
      end
      code = 'retry'
    elseif (new == '5' or new == '6' or new == '7') and (cur == '3' or cur == '4' or cur == '8') then
      local fails = (tonumber(j.fails) or 0) + (new == '6' and 1 or 0)
      if j.cancel == '1' then
        finish(p, id, j, '7', exit_code, 'cancelled (' .. msg .. ')', now)
        code = 'ok'
      elseif cur == '8' then
        requeue(p, id, j, 'preempted; requeued (' .. msg .. ')', now)
        code = 'retry'
      elseif new == '6' and fails < (tonumber(j.max_attempts) or 1) then
        redis.call('HSET', p .. 'job:' .. id, 'fails', fails)
        if exit_code ~= '' then redis.call('HSET', p .. 'job:' .. id, 'exit_code', exit_code) end
        requeue(p, id, j, 'attempt ' .. attempt .. ' failed (' .. msg .. '); retrying', now)
        code = 'retry'
      else
        finish(p, id, j, new, exit_code, msg, now)
        code = 'ok'
      end
    elseif is_terminal(cur) and cur == new then
      code = 'dup'
    end
  end
  if ran then code = ran .. ' ' .. code end
  out[#out + 1] = code
end
flush(p, maxlen)
return out
