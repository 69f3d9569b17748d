--[[
beginMany: begin several keys in one call, in order, each exactly as begin-2.lua would (the same
key twice: the second sees the first's lease). Called with numkeys = 2 * number of keys.

KEYS[1], KEYS[3] ...  record of key 1, 2, ... (KEYS[2i-1] for key i)
KEYS[2], KEYS[4] ...  compaction-marker bucket of each key's hash tag (KEYS[2i])
ARGV[1]  owner
ARGV[2]  lease (ms)
ARGV[3]  safety TTL of an IN_PROGRESS record past its lease end (ms)
ARGV[4i], ARGV[4i+1], ARGV[4i+2], ARGV[4i+3]  per key i: fingerprint (encoded), trace id
         (encoded; '' = none), record id (16 bytes), marker fingerprint hash (8 bytes)
ARGV[3+4n+i]  per key i (n keys, after all of the above): the store key itself (kept while
         IN_PROGRESS, for listInProgress)

Returns { server now (ms), code 1, payload 1, code 2, payload 2, ... } with the codes and
payloads of begin-2.lua, except busy: payload = { leaseUntil } (no record read).
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
--- @include "includes/beginOne"

local owner, lease, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = { now }
local n = #KEYS / 2
for i = 1, n do
  local a = 4 * i
  local code, payload = beginOne(KEYS[2 * i - 1], KEYS[2 * i], ARGV[a], owner, lease, ARGV[a + 1], ttl,
    ARGV[a + 2], ARGV[a + 3], now, false, ARGV[3 + 4 * n + i])
  out[#out + 1] = code
  out[#out + 1] = payload
end
return out
