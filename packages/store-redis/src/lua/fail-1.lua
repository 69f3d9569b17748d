--[[
fail: IN_PROGRESS(fence) -> FAILED, kept for the retention.

KEYS[1]  record
ARGV[1]  fence
ARGV[2]  error (encoded)
ARGV[3]  retention (ms)
ARGV[4]  grace (ms) the record is physically kept past its expiry, to continue its fence

The new record replaces the old whole, which drops the journaled steps; the error goes to its
extras hash ('e').

Returns:
  1  ok (also when the record is already FAILED under this fence: the repeat of a fail whose answer
     was lost; a clear's tombstone is expired, so it is not taken for one)
  0  lost: the record is not IN_PROGRESS under this fence
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
local rec = KEYS[1]

local r = loadRecord(rec)
if r and r.s == 'F' and r.n == tonumber(ARGV[1]) and r.t2 > now then return 1 end
if not r or r.s ~= 'I' or r.n ~= tonumber(ARGV[1]) then return 0 end
local expiresAt = now + tonumber(ARGV[3])
dropExtras(rec, r)
rcall('HSET', rec .. 'x', 'e', ARGV[2])
saveRecord(rec, { s = 'F', n = r.n, a = r.a, t1 = now, t2 = expiresAt, flags = 1, f = r.f, t = r.t },
  expiresAt + tonumber(ARGV[4]))
return 1
