--[[
markStepStarted: journal that a step is about to run, under the IN_PROGRESS record held by the
fence, so a later attempt knows the step is in doubt (see ctx.step's reconcile).

KEYS[1]  record hash
ARGV[1]  fence
ARGV[2]  step name

Stored as field 'S' .. name = '<server now ms>' (no ':' and no result: started, not done); a
later saveStep of the name overwrites it with '<at>:' .. result.

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
rcall('HSET', rec, 'S' .. ARGV[2], string.format('%d', now))
return 1
