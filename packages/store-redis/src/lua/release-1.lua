--[[
release: give the lease up after a retryable error; the next begin acquires at once (retry).

KEYS[1]  record
ARGV[1]  fence
ARGV[2]  error (encoded)
ARGV[3]  safety TTL of an IN_PROGRESS record past its lease end (ms)
ARGV[4]  '1': the handler never ran under this lease (given back before its turn): the attempt
         is not counted (the next begin adds it again) and the last error stays; ARGV[2] unused.
         '2': the same for a lease acquired as a takeover, which the key stays: its lease end is
         set in the past but not 0, so the next begin answers takeover, not retry

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
-- Steps stay: the retry continues where this attempt stopped.
r.t1 = 0
if ARGV[4] == '0' then
  rcall('HSET', rec .. 'x', 'e', ARGV[2])
  r.flags = 1
else
  r.a = math.max(r.a - 1, 0)
  if ARGV[4] == '2' then r.t1 = 1 end
end
saveRecord(rec, r, now + tonumber(ARGV[3]))
return 1
