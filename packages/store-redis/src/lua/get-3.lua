--[[
get: read a record, or the compaction marker standing in for it, with the server clock.

KEYS[1]  record
KEYS[2]  compaction-marker bucket of the key's cluster slot (includes/markers.lua)
KEYS[3]  compaction-marker bucket of the key's hash tag, previous layout (read until it expires)
ARGV[1]  record id (16 bytes)

Returns { server now (ms), record ({ packed, extras }; nil when absent), marker (markerOf) or nil }.
The marker is read only when the record is absent. Expiry is judged by the caller against
the returned server time.
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
--- @include "includes/markers"

local r = loadRecord(KEYS[1])
if r then return { now, recordReply(KEYS[1], r), false } end
return { now, false, markerOf(KEYS[2], KEYS[3], ARGV[1]) or false }
