--[[
markPublished: flag outgoing messages of a live COMPLETED record as confirmed.

KEYS[1]  record hash
ARGV[1]  fence the record was completed under: a straggler from an earlier incarnation of the
         key flags nothing
ARGV[2] ...  message ids; unknown ids are ignored

Returns the number of messages newly flagged (0 when the record is absent, expired, not
COMPLETED or completed under another fence).
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec = KEYS[1]

local h = rcall('HMGET', rec, 's', 'x', 'm', 'n')
if h[1] ~= 'C' or tonumber(h[2]) <= now or h[4] ~= ARGV[1] then return 0 end
local count = tonumber(h[3]) or 0
if count == 0 or #ARGV < 2 then return 0 end
local wanted = {}
for i = 2, #ARGV do wanted[ARGV[i]] = true end
local flagged = 0
for i = 1, count do
  if wanted[rcall('HGET', rec, 'd' .. i)] then
    flagged = flagged + rcall('HSET', rec, 'p' .. i, '1')
  end
end
return flagged
