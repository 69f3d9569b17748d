--[[
completeMany: complete several keys in one call, in order, each exactly as complete-2.lua would.
Called with numkeys = 3 * number of keys.

KEYS[1], KEYS[4] ...  record of key 1, 2, ... (KEYS[3i-2] for key i)
KEYS[2], KEYS[5] ...  completion index of each key's hash tag (KEYS[3i-1])
KEYS[3], KEYS[6] ...  blob index of each key's hash tag (KEYS[3i])
ARGV[1]  grace (ms) a record is physically kept past its expiry
then per key, in order: fence, retention (ms), trace id (encoded; '' = keep the stored one),
result (encoded; '' = none), record id for the index ('' = not indexed), outgoing message count
n, then n pairs of message id, message (encoded)

Returns { r1, r2, ... }: per key 1 (ok) or 0 (lost: not IN_PROGRESS under this fence).
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
--- @include "includes/completeOne"

local grace = tonumber(ARGV[1])
local out = {}
local a = 2
for i = 1, #KEYS / 3 do
  local count = tonumber(ARGV[a + 5])
  out[i] = completeOne(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], ARGV[a], tonumber(ARGV[a + 1]), grace, ARGV[a + 2],
    ARGV[a + 3], ARGV[a + 4], a + 6, count, now)
  a = a + 6 + 2 * count
end
return out
