--[[
compactCompleted: replace old COMPLETED records of one cluster slot by compact markers.
Called with a variable number of keys (numkeys = 1 + number of candidates).

KEYS[1]  compaction-marker bucket of the slot (includes/markers.lua)
KEYS[2] ...  records of the candidates (of any of the slot's tags), in the order of their ids in ARGV
ARGV[1]  hot window (ms): only records completed at least this long ago are compacted
ARGV[2]  grace (ms) the bucket is physically kept past its newest marker's expiry
ARGV[3] ...  per candidate: record id (16 bytes), its member in its tag's completion index

A record's completion index is derived from its name: <prefix>:{<tag>}:<id> -> <prefix>:{<tag>}i.
One call per slot, not per tag: each call rewrites the slot's bucket whole.

A marker keeps the record's expiry and a hash of its fingerprint (markerFingerprint), so a
compacted key still tells a duplicate from a mismatch. Records with unpublished outgoing messages
are kept (their score is bumped to now): a marker cannot republish them. Index entries whose record
expired or changed state are dropped. The markers are written before any record is deleted, so
even a script stopped halfway by an error never loses a record without its marker.

A compacted record's blob result is due for collection a grace from now (see collectBlobs).

Returns { compacted, dropped, deferred }.
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bucket = KEYS[1]
local cutoff = now - tonumber(ARGV[1])
local grace = tonumber(ARGV[2])
--- @include "includes/record"
--- @include "includes/markers"

local function allPublished(rec, r)
  if r.flags ~= 1 then return true end
  local ext = rec .. 'x'
  for i = 1, tonumber(rcall('HGET', ext, 'm')) or 0 do
    if rcall('HEXISTS', ext, 'p' .. i) == 0 then return false end
  end
  return true
end

local dropped, deferred, newest, markers, done = 0, 0, 0, {}, {}
for i = 1, #ARGV - 2 do
  local rec, member = KEYS[1 + i], ARGV[2 + i]
  local index = string.sub(rec, 1, -18) .. 'i'
  local score = rcall('ZSCORE', index, member)
  if score and tonumber(score) <= cutoff then
    -- A damaged record reads as none: its entry is dropped and the record left as it is (begin
    -- refuses its key, see corrupt in includes/record.lua).
    local intact, r = forKey(pcall(loadRecord, rec))
    if not intact then r = nil end
    -- completedAt past the window too: an entry left by an earlier record of the key (expired,
    -- then begun anew) must not compact the new one before its own window.
    if not r or r.s ~= 'C' or r.t2 <= now or r.t1 > cutoff then
      rcall('ZREM', index, member)
      dropped = dropped + 1
    elseif not allPublished(rec, r) then
      rcall('ZADD', index, int(now), member)
      deferred = deferred + 1
    else
      local expiresAt = r.t2
      markers[#markers + 1] = markerEntry(member, expiresAt, r.f)
      done[#done + 1] = { rec, member, r, index }
      if expiresAt > newest then newest = expiresAt end
    end
  end
end

if #done > 0 then addMarkers(bucket, markers, now, newest + grace) end
for _, d in ipairs(done) do
  -- A marker keeps no result: a blob result comes due for collection a grace from now (a duplicate
  -- answered just before may still be reading it) rather than at the record's original end. XX: a
  -- store that does not index its blobs gets no entry.
  if string.sub(d[3].r or '', 1, 1) == 'b' then
    rcall('ZADD', string.sub(d[1], 1, -18) .. 'b', 'XX', 'LT', int(now + grace), d[3].r)
  end
  dropExtras(d[1], d[3])
  rcall('DEL', d[1])
  rcall('ZREM', d[4], d[2])
end
return { #done, dropped, deferred }
