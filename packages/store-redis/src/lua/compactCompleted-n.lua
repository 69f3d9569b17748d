--[[
compactCompleted: replace old COMPLETED records of one hash tag by compact markers.
Called with a variable number of keys (numkeys = 2 + number of candidates).

KEYS[1]  completion index of the tag (sorted set: record id -> completedAt)
KEYS[2]  compaction-marker bucket of the tag (hash: record id -> marker value)
KEYS[3] ...  record hashes of the candidates, in the order of their ids in ARGV
ARGV[1]  hot window (ms): only records completed at least this long ago are compacted
ARGV[2]  grace (ms) the bucket is physically kept past its newest marker's expiry
ARGV[3] ...  per candidate: record id (16 bytes), the index member and marker field

A marker value is expiresAt (6 bytes, big-endian ms) .. the first 8 bytes of the sha1 of the
stored (encoded) fingerprint, so a compacted key still tells a duplicate from a mismatch.
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
local function int(n) return string.format('%d', n) end

local function fingerprintHash(encoded)
  local hex = redis.sha1hex(encoded)
  local out = {}
  for i = 1, 16, 2 do out[#out + 1] = string.char(tonumber(string.sub(hex, i, i + 1), 16)) end
  return table.concat(out)
end

local function allPublished(rec, count)
  for i = 1, count do
    if rcall('HEXISTS', rec, 'p' .. i) == 0 then return false end
  end
  return true
end

local compacted, dropped, deferred, newest = 0, 0, 0, 0
for i = 1, #ARGV - 2 do
  local rec, member = KEYS[2 + i], ARGV[2 + i]
  local score = rcall('ZSCORE', index, member)
  if score and tonumber(score) <= cutoff then
    local h = rcall('HMGET', rec, 's', 'x', 'f', 'm')
    local expiresAt = tonumber(h[2])
    if h[1] ~= 'C' or expiresAt <= now then
      rcall('ZREM', index, member)
      dropped = dropped + 1
    elseif not allPublished(rec, tonumber(h[4]) or 0) then
      rcall('ZADD', index, int(now), member)
      deferred = deferred + 1
    else
      rcall('HSET', bucket, member, struct.pack('>I6', expiresAt) .. fingerprintHash(h[3]))
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
