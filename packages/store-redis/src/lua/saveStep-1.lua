--[[
saveStep: journal a step's result under the IN_PROGRESS record held by the fence.

KEYS[1]  record
ARGV[1]  fence
ARGV[2]  step name
ARGV[3]  step result (bytes)

Stored as field 'S' .. name = '<server now ms>:' .. result.

Returns:
  1  ok
  0  lost: the record is not IN_PROGRESS under this fence
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
local rec = KEYS[1]

local r = loadRecord(rec)
if not r or r.s ~= 'I' or r.n ~= tonumber(ARGV[1]) then return 0 end
rcall('HSET', extrasOf(rec, r), 'S' .. ARGV[2], int(now) .. ':' .. ARGV[3])
expireExtrasWithRecord(rec)
return 1
