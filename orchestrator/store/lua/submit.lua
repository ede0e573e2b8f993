-- Accept jobs, in order: write each one's record, put it in its queue, record its event. One
-- call is atomic (Redis runs nothing else meanwhile), however many jobs it carries. Idempotent
-- on (tenant, client request id): a job whose request id is known, from an earlier call or
-- from earlier in this one, is not written again; the earlier job's id is returned instead.
-- KEYS: none (built from the prefix).
-- ({p}jobs is scored 0 for all: ids sort by submit time, so it is listed by lex range.)
-- ARGV: 1 prefix, 2 now (s), 3 idempotency TTL (s), 4 events maxlen, then 4 per job, from
--       offset o = 4, 8, 12 ...: o+1 job id, o+2 spec (JobSpec protobuf bytes), o+3 traceparent,
--       o+4 its other fields in one string, separated by single spaces (none holds a space):
--       tenant, queue, priority class, max attempts, pending score, GPUs in all (gpus x nodes),
--       CPUs in all, memory MiB in all, client request id ('' for none), allowed countries as
--       ',NO,SE,' ('' for anywhere), excluded sites as ',a,b,' ('' for none)
-- Returns: {id, dedup, id, dedup, ...}: per job, in order, its id and 1 if an earlier job with
-- its request id was returned else 0.
-- (Per job only its record is written one by one: its first event is in the record's history,
-- and the sorted-set and set members and the global events of the whole call go in a few
-- multi-member commands at the end. Few arguments per job keep the caller's encoding of a large
-- call cheap. Fields at their defaults are not written: see load_job.)
local p, now, ttl, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out = {}
local all = {}      -- {0, id, 0, id ...} for {p}jobs
local pending = {}  -- queue -> {score, id, score, id ...}
local queues = {}   -- distinct queues, in first-seen order

local FIELDS = '^' .. string.rep('([^ ]*) ', 10) .. '([^ ]*)$'  -- with 10 spaces, always matches
for o = 4, #ARGV - 4, 4 do
  local id = ARGV[o + 1]
  local tenant, queue, prio, max_attempts, score, gpus, cpus, mem, crid, allowed, excl =
    string.match(ARGV[o + 4], FIELDS)
  local idem = p .. 'idem:' .. tenant .. ':' .. crid
  local existing = crid ~= '' and redis.call('GET', idem)
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = 1
  else
    local f = {'spec', ARGV[o + 2], 'state', '1', 'attempt', '1', 'tenant', tenant,
      'queue', queue, 'prio', prio, 'max_attempts', max_attempts, 'created', now,
      'updated', now, 'score', score, 'r_gpus', gpus, 'r_cpus', cpus, 'r_mem', mem,
      'reason', 'waiting for placement',
      'h', event(nil, id, '1', '1', '', 'submitted', now, '')}
    if ARGV[o + 3] ~= '' then f[#f + 1] = 'tp'; f[#f + 1] = ARGV[o + 3] end
    if allowed ~= '' then f[#f + 1] = 'allowed'; f[#f + 1] = allowed end
    if excl ~= '' then f[#f + 1] = 'excl'; f[#f + 1] = excl end
    redis.call('HSET', p .. 'job:' .. id, unpack(f))
    if crid ~= '' then redis.call('SET', idem, id, 'EX', ttl) end
    all[#all + 1] = 0
    all[#all + 1] = id
    local members = pending[queue]
    if not members then
      members = {}
      pending[queue] = members
      queues[#queues + 1] = queue
    end
    members[#members + 1] = score
    members[#members + 1] = id
    out[#out + 1] = id
    out[#out + 1] = 0
  end
end
if #all > 0 then
  add_members('ZADD', p .. 'jobs', all)
  for _, queue in ipairs(queues) do add_members('ZADD', p .. 'pending:' .. queue, pending[queue]) end
  add_members('SADD', p .. 'queues', queues)
  redis.call('PUBLISH', p .. 'wake', '1')
end
flush(p, maxlen)
return out
