#!lua flags=allow-cross-slot-keys
--[[
compactCandidates: the oldest entries of the completion indexes of some tags, as binary-safe ids.
The tags may be of several cluster slots of one node: a pass reads many slots' indexes per call.
A Cluster refuses declared keys of several slots (CROSSSLOT), so the indexes go as arguments
(like beginMany's records) and allow-cross-slot-keys lets the script reach them on this node.

KEYS[1]      the first index: it routes the call (on a Cluster, to the node of its slot)
ARGV[1]      how many entries to return per index
ARGV[2] ...  the completion indexes of the tags (sorted sets: record id -> completedAt), the
             first one again first

Returns one list per index, in ARGV order: record ids (16 bytes each), oldest completion first.
]]
local rcall = redis.call
local out, count = {}, tonumber(ARGV[1]) - 1
for i = 2, #ARGV do out[i - 1] = rcall('ZRANGE', ARGV[i], 0, count) end
return out
