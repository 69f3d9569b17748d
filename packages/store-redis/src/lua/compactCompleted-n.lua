--[[
compactCompleted: replace old COMPLETED records of one hash tag by compact markers.
Called with a variable number of keys (numkeys = 2 + number of candidates).

KEYS[1]  completion index of the tag (sorted set: record id -> completedAt)
KEYS[2]  compaction-marker bucket of the tag (hash: record id -> marker value)
KEYS[3] ...  records of the candidates, in the order of their ids in ARGV
ARGV[1]  hot window (ms): only records completed at least this long ago are compacted
ARGV[2]  grace (ms) the bucket is physically kept past its newest marker's expiry
ARGV[3] ...  per candidate: record id (16 bytes), the index member and marker field

A marker value is expiresAt (6 bytes, big-endian ms) .. markerFingerprint of the stored
(encoded) fingerprint (includes/record.lua), so a compacted key still tells a duplicate from a mismatch.
Records with unpublished outgoing messages are kept (their score is bumped to now): a marker
cannot republish them. Index entries whose record expired or changed state are dropped.
Once a day per bucket, expired markers are swept (field 'p' holds the next sweep time).

Returns { compacted, dropped, deferred }.
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local index, bucket = KEYS[1], KEYS[2]
local cutoff = now - tonumber(ARGV[1])
local grace = tonumber(ARGV[2])
--- @include "includes/record"

local function allPublished(rec, r)
  if r.flags ~= 1 then return true end
  local ext = rec .. 'x'
  for i = 1, tonumber(rcall('HGET', ext, 'm')) or 0 do
    if rcall('HEXISTS', ext, 'p' .. i) == 0 then return false end
  end
  return true
end

local compacted, dropped, deferred, newest = 0, 0, 0, 0
for i = 1, #ARGV - 2 do
  local rec, member = KEYS[2 + i], ARGV[2 + i]
  local score = rcall('ZSCORE', index, member)
  if score and tonumber(score) <= cutoff then
    local r = loadRecord(rec)
    if not r or r.s ~= 'C' or r.t2 <= now then
      rcall('ZREM', index, member)
      dropped = dropped + 1
    elseif not allPublished(rec, r) then
      rcall('ZADD', index, int(now), member)
      deferred = deferred + 1
    else
      local expiresAt = r.t2
      rcall('HSET', bucket, member, struct.pack('>I6', expiresAt) .. markerFingerprint(r.f))
      dropExtras(rec, r)
      rcall('DEL', rec)
      rcall('ZREM', index, member)
      compacted = compacted + 1
      if expiresAt > newest then newest = expiresAt end
    end
  end
end

if compacted > 0 then
  local ttl = rcall('PTTL', bucket)
  if ttl < 0 or now + ttl < newest + grace then rcall('PEXPIREAT', bucket, int(newest + grace)) end
  local nextSweep = tonumber(rcall('HGET', bucket, 'p')) or 0
  if now >= nextSweep then
    local all = rcall('HGETALL', bucket)
    for j = 1, #all, 2 do
      if all[j] ~= 'p' and struct.unpack('>I6', all[j + 1]) <= now then rcall('HDEL', bucket, all[j]) end
    end
    rcall('HSET', bucket, 'p', int(now + 86400000))
  end
end
return { compacted, dropped, deferred }
