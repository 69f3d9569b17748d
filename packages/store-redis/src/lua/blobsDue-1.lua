#!lua flags=allow-cross-slot-keys
--[[
blobsDue: the blob index entries whose records have passed their physical end, for some tags at
once (of several cluster slots of one node: a blob collection pass reads many tags per call). The
indexes go as arguments, as in compactCandidates-1.lua (a Cluster refuses declared keys of several
slots).

KEYS[1]      the first index: it routes the call (on a Cluster, to the node of its slot)
ARGV[1]      the server time (ms) up to which entries are due (an entry's score is its record's end)
ARGV[2]      how many entries to return per index
ARGV[3] ...  the blob indexes of the tags (sorted sets: packed pointer -> end), the first one again
             first

Returns one list per index, in ARGV order: the due members (packed pointers), earliest first.
]]
local rcall = redis.call
local out, now, count = {}, ARGV[1], ARGV[2]
for i = 3, #ARGV do out[i - 2] = rcall('ZRANGE', ARGV[i], '-inf', now, 'BYSCORE', 'LIMIT', 0, count) end
return out
