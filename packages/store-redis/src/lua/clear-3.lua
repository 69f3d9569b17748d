--[[
clear: forget a key's record (or its compaction marker), so the next message with the key runs
anew: an operator's step before replaying a dead letter whose record is FAILED, or re-running
a COMPLETED one on purpose. A record held under a live lease is left alone.

KEYS[1]  record hash
KEYS[2]  compaction-marker bucket of the key's hash tag
KEYS[3]  completion index of the key's hash tag
ARGV[1]  record id (16 bytes): the key's field in the marker bucket and index member

Returns:
  1  cleared: the record or its marker was deleted
  0  absent: nothing was stored for the key
 -1  busy: the record is IN_PROGRESS under a live lease (nothing deleted)
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec, bucket, index = KEYS[1], KEYS[2], KEYS[3]

local h = rcall('HMGET', rec, 's', 'l')
if h[1] == 'I' and tonumber(h[2]) > now then return -1 end
local removed = rcall('DEL', rec) + rcall('HDEL', bucket, ARGV[1])
rcall('ZREM', index, ARGV[1])
if removed > 0 then return 1 end
return 0
