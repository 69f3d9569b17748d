--[[
compactCandidates: the oldest entries of one tag's completion index, as binary-safe ids.

KEYS[1]  completion index of the tag (sorted set: record id -> completedAt)
ARGV[1]  how many entries to return

Returns a list of record ids (16 bytes each), oldest completion first; empty when none.
]]
local rcall = redis.call
return rcall('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
