-- Read what site_records needs of many sites in one call (a pipeline of four commands per site
-- costs the client far more than the server: some 60 ms a cycle at 1,000 sites).
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix, then site ids
-- Returns: per site, in order, the four items of add_site_row (_lib.lua)
local p = ARGV[1]
local out = {}
for i = 2, #ARGV do add_site_row(out, p, ARGV[i]) end
return out
