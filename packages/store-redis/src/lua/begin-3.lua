--[[
begin: claim the record of one key for an attempt, or say why not.

KEYS[1]  record of the key
KEYS[2]  compaction-marker bucket of the key's cluster slot (includes/markers.lua)
KEYS[3]  compaction-marker bucket of the key's hash tag, previous layout (read until it expires)
ARGV[1]  fingerprint (encoded)
ARGV[2]  owner
ARGV[3]  lease (ms)
ARGV[4]  trace id (encoded; '' = none)
ARGV[5]  safety TTL of an IN_PROGRESS record past its lease end (ms)
ARGV[6]  record id (16 bytes)
ARGV[7]  the store key itself (kept while IN_PROGRESS, for listInProgress)
ARGV[8]  server time (ms) after which the caller has given up waiting for the answer ('0' = never)
ARGV[9]  '1' on a Cluster (the slot is checked for a migration first, see refuseMigrating), '0' on
         a standalone server

A new record's fence is max(server now in ms, previous fence + 1); takeover and retry add 1.

Returns { code, server now (ms), payload }:
  'N'  acquired, kind new       payload = fence (the lease ends at server now + lease)
  'R'  acquired, kind retry     payload = the record after the write
  'T'  acquired, kind takeover  payload = the record after the write
  'B'  busy                     payload = the stored record, or { server now } for a request
                                that arrived after its caller gave up (nothing written)
  'D'  duplicate                payload = the stored record
  'F'  failed                   payload = the stored record
  'M'  mismatch                 payload = the stored record
  'K'  duplicate of a compacted record   payload = marker (includes/markers.lua, markerOf)
  'X'  mismatch with a compacted record  payload = marker
A record payload is { packed record (includes/record.lua), its extras hash (flat; empty if none) }.
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
--- @include "includes/record"
--- @include "includes/markers"
--- @include "includes/beginOne"

local code, payload = beginOne(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4],
  tonumber(ARGV[5]), ARGV[6], now, true, ARGV[7], tonumber(ARGV[8]) or 0, ARGV[9] == '1')
return { code, now, payload }
