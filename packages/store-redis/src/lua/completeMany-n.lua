--[[
completeMany: IN_PROGRESS(fence) -> COMPLETED with result and outgoing messages, in one write
per key; several keys in one call, in order (complete is a call with one key). Called with
numkeys = number of keys. The record answers duplicates until server now + retention and is
physically kept a grace longer, to continue its fence. It replaces the old record whole, which
drops the lease, the journaled steps and the last error; messages go to its extras hash as
'd<i>' = id, 'o<i>' = message, and 'p<i>' once published; 'm' = their count.

KEYS[1] ...  record of each key, in order. Its tag's completion index and blob index are
             derived from the record's name (see layout.ts): same hash tag, same cluster slot.
ARGV[1]  grace (ms) a record is physically kept past its expiry
ARGV[2]  per key, in order: fence (6 bytes), retention in ms (6 bytes), indexed for compaction
         (1 byte, 1 = yes), message count n (4 bytes), then length-prefixed strings (4-byte
         length, then the bytes): trace id (encoded; '' = keep the stored one), result (encoded;
         '' = none), and n pairs of message id, message (encoded). Numbers big-endian.

Returns { r1, r2, ... }: per key 1 (ok) or 0 (lost: not IN_PROGRESS under this fence).
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
--- @include "includes/completeOne"

local grace, packed = tonumber(ARGV[1]), ARGV[2]
local out = {}
local pos = 1
for i = 1, #KEYS do
  local rec = KEYS[i]
  local fence, retention, indexed, count, trace, result
  fence, retention, indexed, count, trace, result, pos = struct.unpack('>I6I6BI4I4c0I4c0', packed, pos)
  local messages = {}
  for j = 1, 2 * count do
    messages[j], pos = struct.unpack('>I4c0', packed, pos)
  end
  local id = ''
  if indexed == 1 then id = string.sub(rec, -16) end
  -- rec = <prefix>:{<tag>}:<16-byte id>
  out[i] = completeOne(rec, string.sub(rec, 1, -18), fence, retention, grace, trace, result, id, messages, now)
end
return out
