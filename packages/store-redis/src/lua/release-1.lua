--[[
release: give the lease up after a retryable error; the next begin acquires at once (retry).

KEYS[1]  record
ARGV[1]  fence
ARGV[2]  error (encoded)
ARGV[3]  safety TTL of an IN_PROGRESS record past its lease end (ms)

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
-- Steps and attempt stay: the retry continues where this attempt stopped.
rcall('HSET', rec .. 'x', 'e', ARGV[2])
r.t1, r.flags = 0, 1
saveRecord(rec, r, now + tonumber(ARGV[3]))
return 1
