--[[
saveStep: journal a step's result under the IN_PROGRESS record held by the fence.

KEYS[1]  record hash
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
local rec = KEYS[1]

local h = rcall('HMGET', rec, 's', 'n')
if h[1] ~= 'I' or h[2] ~= ARGV[1] then return 0 end
rcall('HSET', rec, 'S' .. ARGV[2], string.format('%d', now) .. ':' .. ARGV[3])
return 1
