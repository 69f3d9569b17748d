--[[
extend: push the lease of the holding fence out to server now + lease.

KEYS[1]  record hash
ARGV[1]  fence
ARGV[2]  lease (ms)
ARGV[3]  safety TTL of an IN_PROGRESS record past its lease end (ms)

Returns:
  1  ok
  0  lost: the record is not IN_PROGRESS under this fence
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec = KEYS[1]

local h = rcall('HMGET', rec, 's', 'n')
-- Fences are written as canonical decimal strings, so comparing text compares numbers.
if h[1] ~= 'I' or h[2] ~= ARGV[1] then return 0 end
local leaseUntil = now + tonumber(ARGV[2])
rcall('HSET', rec, 'l', string.format('%d', leaseUntil))
rcall('PEXPIREAT', rec, string.format('%d', leaseUntil + tonumber(ARGV[3])))
return 1
