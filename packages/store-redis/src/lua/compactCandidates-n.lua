--[[
compactCandidates: the oldest entries of the completion indexes of one cluster slot's tags, as
binary-safe ids. Called with numkeys = the number of indexes.

KEYS[1] ...  completion indexes of the tags (sorted sets: record id -> completedAt), one slot
ARGV[1]  how many entries to return per index

Returns one list per index, in KEYS order: record ids (16 bytes each), oldest completion first.
]]
local rcall = redis.call
local out, count = {}, tonumber(ARGV[1]) - 1
for i = 1, #KEYS do out[i] = rcall('ZRANGE', KEYS[i], 0, count) end
return out
