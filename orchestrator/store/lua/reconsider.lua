-- Put every unschedulable job back in its queue so the scheduler looks at it again (after the
-- set of sites changed). The reason stays until a new decision replaces it.
-- KEYS: none (built from the prefix).
-- ARGV: 1 prefix
-- Returns: number of jobs put back
return reconsider_all(ARGV[1])
