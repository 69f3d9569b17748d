--[[
markPublishedMany: markPublished-1.lua for several records in one call.
Called with numkeys = number of records.

KEYS[1] ...  record hash of each record, in order
ARGV: per record, in order: fence it was completed under, id count n, then n message ids

Returns the number of messages newly flagged in all.
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local flagged = 0
local a = 1
for k = 1, #KEYS do
  local rec, fence, n = KEYS[k], ARGV[a], tonumber(ARGV[a + 1])
  local h = rcall('HMGET', rec, 's', 'x', 'm', 'n')
  local count = tonumber(h[3]) or 0
  if h[1] == 'C' and tonumber(h[2]) > now and h[4] == fence and count > 0 and n > 0 then
    local wanted = {}
    for i = 1, n do wanted[ARGV[a + 1 + i]] = true end
    for i = 1, count do
      if wanted[rcall('HGET', rec, 'd' .. i)] then flagged = flagged + rcall('HSET', rec, 'p' .. i, '1') end
    end
  end
  a = a + 2 + n
end
return flagged
