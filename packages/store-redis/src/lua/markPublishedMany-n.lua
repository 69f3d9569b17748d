--[[
markPublishedMany: markPublished-1.lua for several records in one call.
Called with numkeys = number of records.

KEYS[1] ...  each record, in order
ARGV: per record, in order: fence it was completed under, id count n, then n message ids

Returns the number of messages newly flagged in all.
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
--- @include "includes/markPublishedOne"

local flagged = 0
local a = 1
for k = 1, #KEYS do
  local n = tonumber(ARGV[a + 1])
  if n > 0 then
    local wanted = {}
    for i = 1, n do wanted[ARGV[a + 1 + i]] = true end
    flagged = flagged + markPublishedOne(KEYS[k], ARGV[a], wanted, now)
  end
  a = a + 2 + n
end
return flagged
