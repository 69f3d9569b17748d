#!lua flags=allow-cross-slot-keys
--[[
completeMany: IN_PROGRESS(fence) -> COMPLETED with result and outgoing messages, in one write
per key; several keys in one call, in order (complete is a call with one key). Called with
numkeys = 1. The record answers duplicates until server now + retention and is physically kept
a grace longer, to continue its fence. It replaces the old record whole, which drops the lease,
the journaled steps and the last error; messages go to its extras hash as 'd<i>' = id,
'o<i>' = message, and 'p<i>' once published; 'm' = their count.

KEYS[1]  the first key's record: it routes the call (see beginMany-n.lua, also for a record on
         another node of a Cluster: the keys before it are completed, their answers lost with the
         error; unacked, their messages come back as duplicates)
ARGV[1]  grace (ms) a record is physically kept past its expiry
ARGV[2]  '1' on a Cluster (each key's slot is checked for a migration first, see refuseMigrating),
         '0' on a standalone server
ARGV[3]  per key, in order: its record's name (length-prefixed: 4-byte length, then the bytes),
         fence (6 bytes), retention in ms (6 bytes), index flags (1 byte: bit 1, indexed for
         compaction; bit 2, a blob result's pointer goes to the blob index),
         message count n (4 bytes), then length-prefixed: trace id (encoded; '' = keep the stored
         one), result (encoded; '' = none), and n pairs of message id, message (encoded).
         Numbers big-endian. A key's completion and blob indexes are derived from its record's
         name (see layout.ts).

Returns { r1, r2, ... }: per key 1 (ok; also for a record already COMPLETED under this fence) or 0
(lost: not IN_PROGRESS under this fence, or no longer a record at all).
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
--- @include "includes/completeOne"

local grace, cluster, packed = tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3]
local out = {}
local pos, size = 1, #packed
while pos <= size do
  local rec, fence, retention, indexed, count, trace, result
  rec, fence, retention, indexed, count, trace, result, pos = struct.unpack('>I4c0I6I6BI4I4c0I4c0', packed, pos)
  local messages = {}
  for j = 1, 2 * count do
    messages[j], pos = struct.unpack('>I4c0', packed, pos)
  end
  local id = ''
  if indexed % 2 == 1 then id = string.sub(rec, -16) end
  -- rec = <prefix>:{<tag>}:<16-byte id>
  local intact, done = forKey(pcall(completeOne, rec, string.sub(rec, 1, -18), fence, retention, grace, trace,
    result, id, messages, now, indexed >= 2, cluster))
  -- A record damaged since its begin no longer holds the fence: lost, for this key alone.
  if not intact then done = 0 end
  out[#out + 1] = done
end
return out
