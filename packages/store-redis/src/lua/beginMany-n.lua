--[[
beginMany: begin several keys in one call, in order, each exactly as begin-2.lua would (the same
key twice: the second sees the first's lease). Called with numkeys = number of keys.

KEYS[1] ...  record of each key, in order. Its tag's compaction-marker bucket and its id are
             derived from the record's name (see layout.ts): same hash tag, same cluster slot.
ARGV[1]  owner
ARGV[2]  lease (ms)
ARGV[3]  safety TTL of an IN_PROGRESS record past its lease end (ms)
ARGV[4]  per key, in order, three length-prefixed strings (4-byte big-endian length, then the
         bytes): fingerprint (encoded), trace id (encoded; '' = none), the store key itself (kept
         while IN_PROGRESS, for listInProgress)

One packed argument instead of three per key: most of the cost of a call on the client is
building its arguments.

Returns { server now (ms), code 1, payload 1, code 2, payload 2, ... } with the codes and
payloads of begin-2.lua, except busy: payload = { leaseUntil } (no record read).
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
--- @include "includes/beginOne"

local owner, lease, ttl, packed = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local out = { now }
local pos = 1
for i = 1, #KEYS do
  local rec = KEYS[i]
  local fp, trace, name
  fp, trace, name, pos = struct.unpack('>I4c0I4c0I4c0', packed, pos)
  -- rec = <prefix>:{<tag>}:<16-byte id>; the bucket is <prefix>:{<tag>}m.
  local code, payload = beginOne(rec, string.sub(rec, 1, -18) .. 'm', fp, owner, lease, trace, ttl,
    string.sub(rec, -16), now, false, name)
  out[#out + 1] = code
  out[#out + 1] = payload
end
return out
