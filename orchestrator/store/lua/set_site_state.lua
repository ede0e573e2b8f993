-- Set a site's administrative state, recorded in the site's log (set_site_state in _lib.lua).
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, 2 site id, 3 new state (1 ACTIVE, 2 CORDONED, 3 DRAINING, 4 LOST), 4 now (s),
--       5 why ('' for nothing to say)
-- Returns: 1, or 0 when there is no such site
local p, site = ARGV[1], ARGV[2]
if redis.call('EXISTS', p .. 'site:' .. site) == 0 then return 0 end
set_site_state(p, site, ARGV[3], ARGV[4], ARGV[5] or '')
return 1
