--[[
fail: IN_PROGRESS(fence) -> FAILED, kept for the retention.

KEYS[1]  record hash
ARGV[1]  fence
ARGV[2]  error (encoded)
ARGV[3]  retention (ms)
ARGV[4]  grace (ms) the record is physically kept past its expiry, to continue its fence

The new record replaces the old hash whole, which drops the journaled steps.

Returns:
  1  ok
  0  lost: the record is not IN_PROGRESS under this fence
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec = KEYS[1]
local function int(n) return string.format('%d', n) end

local h = rcall('HMGET', rec, 's', 'n', 'f', 'a', 't')
if h[1] ~= 'I' or h[2] ~= ARGV[1] then return 0 end
local expiresAt = now + tonumber(ARGV[3])
rcall('DEL', rec)
rcall('HSET', rec, 's', 'F', 'f', h[3], 'n', h[2], 'a', h[4], 'e', ARGV[2], 'c', int(now),
  'x', int(expiresAt))
if h[5] then rcall('HSET', rec, 't', h[5]) end
rcall('PEXPIREAT', rec, int(expiresAt + tonumber(ARGV[4])))
return 1
