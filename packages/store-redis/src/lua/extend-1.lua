--[[
extend: push the lease of the holding fence out to server now + lease.

KEYS[1]  record
ARGV[1]  fence
ARGV[2]  lease (ms)
ARGV[3]  safety TTL of an IN_PROGRESS record past its lease end (ms)

Returns:
  1  ok
  0  lost: the record is not IN_PROGRESS under this fence, or its lease was released (lease end
     0 or 1): an extension that lands after the release must not make the lease live again
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
local rec = KEYS[1]

local r = loadRecord(rec)
if not r or r.s ~= 'I' or r.n ~= tonumber(ARGV[1]) or r.t1 <= 1 then return 0 end
r.t1 = now + tonumber(ARGV[2])
saveRecord(rec, r, r.t1 + tonumber(ARGV[3]))
return 1
