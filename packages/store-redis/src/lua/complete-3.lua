--[[
complete: IN_PROGRESS(fence) -> COMPLETED with result and outgoing messages, in one write.

KEYS[1]  record
KEYS[2]  completion index of the key's hash tag (sorted set member -> completedAt)
KEYS[3]  blob index of the key's hash tag (sorted set: packed blob pointer -> the record's physical end)
ARGV[1]  fence
ARGV[2]  retention (ms): the record answers duplicates until server now + retention
ARGV[3]  grace (ms) the record is physically kept past its expiry, to continue its fence
ARGV[4]  trace id (encoded; '' = keep the stored one)
ARGV[5]  result (encoded; '' = none)
ARGV[6]  record id, the index member ('' = not indexed for compaction)
ARGV[7], ARGV[8] ...  per outgoing message: id, message (encoded)

The new record replaces the old whole, which drops the journaled steps. Messages are stored in
its extras hash as 'd<i>' = id, 'o<i>' = message, and 'p<i>' once published; 'm' = their count.

Returns:
  1  ok
  0  lost: the record is not IN_PROGRESS under this fence
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
--- @include "includes/completeOne"

return completeOne(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5],
  ARGV[6], 7, (#ARGV - 6) / 2, now)
