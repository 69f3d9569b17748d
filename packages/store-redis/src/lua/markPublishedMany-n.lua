#!lua flags=allow-cross-slot-keys
--[[
markPublishedMany: markPublished-1.lua for several records in one call. Called with numkeys = 1.

KEYS[1]  the first record: it routes the call (see beginMany-n.lua)
ARGV[1]  per record, in order: its name and fence it was completed under as length-prefixed
         strings (4-byte big-endian length, then the bytes), id count n (4 bytes), then n
         length-prefixed message ids

Returns the number of messages newly flagged in all.
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
--- @include "includes/markPublishedOne"

local packed = ARGV[1]
local flagged = 0
local pos, size = 1, #packed
while pos <= size do
  local rec, fence, n
  rec, fence, n, pos = struct.unpack('>I4c0I4c0I4', packed, pos)
  local wanted = {}
  for i = 1, n do
    local id
    id, pos = struct.unpack('>I4c0', packed, pos)
    wanted[id] = true
  end
  if n > 0 then
    local intact, newly = forKey(pcall(markPublishedOne, rec, fence, wanted, now))
    -- A damaged record has nothing to flag; the others of the batch are flagged.
    if not intact then newly = 0 end
    flagged = flagged + newly
  end
end
return flagged
