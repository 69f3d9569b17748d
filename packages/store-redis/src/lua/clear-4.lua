--[[
clear: forget a key's record (or its compaction marker), so the next message with the key runs
anew: an operator's step before replaying a dead letter whose record is FAILED, or re-running
a COMPLETED one on purpose. A record held under a live lease is left alone.

KEYS[1]  record
KEYS[2]  compaction-marker bucket of the key's cluster slot (includes/markers.lua)
KEYS[3]  compaction-marker bucket of the key's hash tag, previous layout
KEYS[4]  completion index of the key's hash tag
ARGV[1]  record id (16 bytes): the index member (and the previous layout's marker field)
ARGV[2]  grace (ms) the cleared record is kept as an expired tombstone
ARGV[3]  fence of the FAILED record the caller read, or '': only that record is cleared

The record is not deleted but replaced by an expired tombstone holding only its fence, kept for
the grace: the next begin reads it as absent and still starts above its fence, even within the
same millisecond.

Returns:
  1  cleared: the record or its marker was forgotten
  0  absent: nothing was stored for the key (or only an expired record or marker)
 -1  busy: the record is IN_PROGRESS under a live lease (nothing changed)
 -2  changed: with ARGV[3], the key holds another record than that FAILED one (COMPLETED, a
     compaction marker, IN_PROGRESS, FAILED under another fence): nothing changed
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
--- @include "includes/markers"
local rec, bucket, legacy, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local r = loadRecord(rec)
local live = r and (r.s == 'I' or r.t2 > now)
local failedFence = tonumber(ARGV[3])
if failedFence then
  if live and (r.s ~= 'F' or r.n ~= failedFence) then return -2 end
  if not live then
    local m = markerOf(bucket, legacy, ARGV[1])
    if m and struct.unpack('>I6', m) > now then return -2 end
  end
end
if r and r.s == 'I' and r.t1 > now then return -1 end
-- A marker counts only while it answers for the key: an expired one is removed, but was absent.
local removed = 0
if removeMarker(bucket, string.sub(ARGV[1], 1, 10)) * 1000 > now then removed = 1 end
local old = rcall('HGET', legacy, ARGV[1])
if old then
  rcall('HDEL', legacy, ARGV[1])
  if struct.unpack('>I6', old) > now then removed = 1 end
end
rcall('ZREM', index, ARGV[1])
if r then
  dropExtras(rec, r)
  saveRecord(rec, { s = 'F', n = r.n, a = 0, t1 = 0, t2 = 0, flags = 0, f = '', t = '' }, now + tonumber(ARGV[2]))
end
if live or removed > 0 then return 1 end
return 0
