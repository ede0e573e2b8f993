-- Accept one job: write its record, put it in its queue, record the event. Idempotent on
-- (tenant, client request id).
-- KEYS: none (built from the prefix).
-- ({p}jobs is scored 0 for all: ids sort by submit time, so it is listed by lex range.)
-- ARGV: 1 prefix, 2 job id, 3 spec (JobSpec protobuf bytes), 4 tenant, 5 queue,
--       6 priority class, 7 max attempts, 8 now (s), 9 pending score, 10 traceparent,
--       11 GPUs in all (gpus x nodes), 12 CPUs in all, 13 memory MiB in all,
--       14 client request id ('' for none), 15 idempotency TTL (s), 16 events maxlen,
--       17 submit time in ms, 18 allowed countries as ',NO,SE,' ('' for anywhere),
--       19 excluded sites as ',a,b,' ('' for none)
-- Returns: {job id, 1 if an earlier job with that request id was returned else 0}
local p, id, tenant, queue, crid = ARGV[1], ARGV[2], ARGV[4], ARGV[5], ARGV[14]
local idem = p .. 'idem:' .. tenant .. ':' .. crid
if crid ~= '' then
  local existing = redis.call('GET', idem)
  if existing then return {existing, 1} end
end
redis.call('HSET', p .. 'job:' .. id,
  'spec', ARGV[3], 'state', '1', 'attempt', '1', 'site', '', 'gpu_type', '',
  'tenant', tenant, 'queue', queue, 'prio', ARGV[6], 'max_attempts', ARGV[7],
  'created', ARGV[8], 'updated', ARGV[8], 'score', ARGV[9], 'tp', ARGV[10],
  'r_gpus', ARGV[11], 'r_cpus', ARGV[12], 'r_mem', ARGV[13], 'cancel', '0', 'unsched', '0',
  'reason', 'waiting for placement', 'allowed', ARGV[18], 'excl', ARGV[19], 'fails', '0',
  'preempts', '0', 'r_watts', '0', 'nonhome', '0', 'jur', '', 'preempting', '0')
redis.call('ZADD', p .. 'jobs', 0, id)
redis.call('ZADD', p .. 'pending:' .. queue, ARGV[9], id)
redis.call('SADD', p .. 'queues', queue)
if crid ~= '' then redis.call('SET', idem, id, 'EX', ARGV[15]) end
emit(p, id, '1', '1', '', 'submitted', ARGV[8], '', ARGV[16])
redis.call('PUBLISH', p .. 'wake', '1')
return {id, 0}
