--[[
markPublished: flag outgoing messages of a live COMPLETED record as confirmed.

KEYS[1]  record
ARGV[1]  fence the record was completed under: a straggler from an earlier incarnation of the
         key flags nothing
ARGV[2] ...  message ids; unknown ids are ignored

Returns the number of messages newly flagged (0 when the record is absent, expired, not
COMPLETED or completed under another fence).
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
--- @include "includes/markPublishedOne"

if #ARGV < 2 then return 0 end
local wanted = {}
for i = 2, #ARGV do wanted[ARGV[i]] = true end
return markPublishedOne(KEYS[1], ARGV[1], wanted, now)
