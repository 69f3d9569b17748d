#!lua flags=allow-cross-slot-keys
--[[
beginMany: begin several keys in one call, in order, each exactly as begin-2.lua would (the same
key twice: the second sees the first's lease). Called with numkeys = 1.

KEYS[1]  the first key's record: it routes the call (on a Cluster, to the node of its slot)
ARGV[1]  safety TTL of an IN_PROGRESS record past its lease end (ms)
ARGV[2]  '1' on a Cluster (each key's slot is checked for a migration first, see
         refuseMigrating), '0' on a standalone server
ARGV[3]  per key, in order, six length-prefixed strings (4-byte big-endian length, then the
         bytes): its record's name, fingerprint (encoded), trace id (encoded; '' = none), the store
         key itself (kept while IN_PROGRESS, for listInProgress), owner, the marker bucket of its
         cluster slot; then its lease in ms and the server time (ms) after which its caller has
         given up (0 = never), 6 bytes each, big-endian

A key's id and its previous layout's marker bucket are derived from its record's name (see
layout.ts). One packed
argument instead of several per key: most of a call's cost on the client is building its
arguments, and one call per batch (per node on a Cluster, hence allow-cross-slot-keys) is most of
the saving on the server. On a Cluster a record on another node stops the script with an error
at that key (after a resharding, until the client's slot map catches up); the keys before it are
begun, but their answers are lost with the error, like a lost reply: the retry finds its own
lease and waits it out.

Returns { server now (ms), code 1, payload 1, code 2, payload 2, ... } with the codes and
payloads of begin-2.lua, except busy: payload = { leaseUntil } (no record read), and 'E' for a
key whose stored value is not a record (see corrupt in includes/record.lua): payload = why.
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
--- @include "includes/markers"
--- @include "includes/beginOne"

local ttl, cluster, packed = tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3]
local out = { now }
local pos, size = 1, #packed
while pos <= size do
  local rec, fp, trace, name, owner, bucket, lease, deadline
  rec, fp, trace, name, owner, bucket, lease, deadline, pos =
    struct.unpack('>I4c0I4c0I4c0I4c0I4c0I4c0I6I6', packed, pos)
  -- rec = <prefix>:{<tag>}:<16-byte id>; the previous layout's bucket is <prefix>:{<tag>}m.
  local intact, code, payload = forKey(pcall(beginOne, rec, bucket, string.sub(rec, 1, -18) .. 'm', fp, owner,
    lease, trace, ttl, string.sub(rec, -16), now, false, name, deadline, cluster))
  -- A damaged record fails its own key, not the batch (see corruption in includes/record.lua).
  if not intact then code, payload = 'E', code end
  out[#out + 1] = code
  out[#out + 1] = payload
end
return out
