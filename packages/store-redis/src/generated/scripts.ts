// Generated from src/lua/*.lua by scripts/generate-lua.mjs (npm run generate). Do not edit.

/** A Lua script and the ioredis command it is registered as. */
export interface LuaScript {
  readonly command: string;
  /** Fixed key count, or undefined when the caller passes numkeys first. */
  readonly numberOfKeys: number | undefined;
  readonly sha1: string;
  readonly lua: string;
}

export const LAYOUT_VERSION = 1;

export const scripts = {
  begin: {
    command: 'eoBegin_v1_80c4c73e',
    numberOfKeys: 2,
    sha1: '80c4c73e0e8ac644774787aa4db33ab7de175153',
    lua: `--[[
begin: claim the record of one key for an attempt, or say why not.

KEYS[1]  record hash of the key
KEYS[2]  compaction-marker bucket of the key's hash tag
ARGV[1]  fingerprint (encoded)
ARGV[2]  owner
ARGV[3]  lease (ms)
ARGV[4]  trace id (encoded; '' = none)
ARGV[5]  safety TTL of an IN_PROGRESS record past its lease end (ms)
ARGV[6]  record id (16 bytes): the key's field in the marker bucket
ARGV[7]  marker fingerprint hash (8 bytes)
ARGV[8]  the store key itself (kept while IN_PROGRESS, for listInProgress)

A new record's fence is max(server now in ms, previous fence + 1); takeover and retry add 1.

Returns { code, server now (ms), payload }:
  'N'  acquired, kind new       payload = { fence, leaseUntil }
  'R'  acquired, kind retry     payload = record hash after the write
  'T'  acquired, kind takeover  payload = record hash after the write
  'B'  busy                     payload = stored record hash
  'D'  duplicate                payload = stored record hash
  'F'  failed                   payload = stored record hash
  'M'  mismatch                 payload = stored record hash
  'K'  duplicate of a compacted record   payload = marker value
  'X'  mismatch with a compacted record  payload = marker value
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function int(n) return string.format('%d', n) end
-- beginOne: the begin transition of one key (see begin-2.lua for the codes). \`full\` asks for the
-- whole record hash with a busy answer; batches answer busy with the lease end only.
-- Returns code, payload: 'N' { fence, leaseUntil }; 'R'/'T' the record hash after the write;
-- 'B' the record hash, or { leaseUntil } when not \`full\`; 'D'/'F'/'M' the record hash;
-- 'K'/'X' the compaction marker.
-- \`name\` is the store key itself: kept in 'k' with the attempt's start time 'b' while the record is
-- IN_PROGRESS (complete and fail rewrite the hash without them), for listInProgress.
local function beginOne(rec, bucket, fp, owner, lease, trace, ttl, id, fphash, now, full, name)
  local h = rcall('HMGET', rec, 's', 'f', 'n', 'a', 'l', 'x')
  local state = h[1]
  -- COMPLETED and FAILED records are logically gone at their expiry, though still stored for a grace.
  local live = state == 'I' or (state and tonumber(h[6]) > now)

  if live then
    -- A different payload under the same key is reported whatever the state.
    if h[2] ~= fp then return 'M', rcall('HGETALL', rec) end
    if state == 'C' then return 'D', rcall('HGETALL', rec) end
    if state == 'F' then return 'F', rcall('HGETALL', rec) end
    local leaseUntil = tonumber(h[5])
    if leaseUntil > now then
      if full then return 'B', rcall('HGETALL', rec) end
      return 'B', { leaseUntil }
    end
    -- leaseUntil 0 means released after a retryable error; any other past value, a lapsed holder.
    local code = 'T'
    if leaseUntil == 0 then code = 'R' end
    leaseUntil = now + lease
    rcall('HSET', rec, 'n', int(tonumber(h[3]) + 1), 'a', int(tonumber(h[4]) + 1), 'w', owner,
      'l', int(leaseUntil), 'k', name, 'b', int(now))
    if trace == '' then rcall('HDEL', rec, 't') else rcall('HSET', rec, 't', trace) end
    rcall('PEXPIREAT', rec, int(leaseUntil + ttl))
    return code, rcall('HGETALL', rec)
  end

  -- Fences of new records start at the server clock, so they do not repeat even after the old
  -- record is gone; an expired record still stored also guards against a clock stepping back.
  local fence = now
  if state then
    fence = math.max(now, tonumber(h[3]) + 1)
    rcall('DEL', rec)
  else
    -- No record: a compacted one may still answer "already processed".
    local marker = rcall('HGET', bucket, id)
    if marker then
      if struct.unpack('>I6', marker) > now then
        if string.sub(marker, 7) ~= fphash then return 'X', marker end
        return 'K', marker
      end
      rcall('HDEL', bucket, id)
    end
  end

  local leaseUntil = now + lease
  if trace ~= '' then
    rcall('HSET', rec, 's', 'I', 'f', fp, 'n', int(fence), 'a', '1', 'w', owner, 'l', int(leaseUntil), 't', trace,
      'k', name, 'b', int(now))
  else
    rcall('HSET', rec, 's', 'I', 'f', fp, 'n', int(fence), 'a', '1', 'w', owner, 'l', int(leaseUntil),
      'k', name, 'b', int(now))
  end
  rcall('PEXPIREAT', rec, int(leaseUntil + ttl))
  return 'N', { fence, leaseUntil }
end

local code, payload = beginOne(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4],
  tonumber(ARGV[5]), ARGV[6], ARGV[7], now, true, ARGV[8])
return { code, now, payload }
`,
  },
  beginMany: {
    command: 'eoBeginMany_v1_6b20f417',
    numberOfKeys: undefined,
    sha1: '6b20f4174f5fb6d0ed510515a14b5b8085f1755a',
    lua: `--[[
beginMany: begin several keys in one call, in order, each exactly as begin-2.lua would (the same
key twice: the second sees the first's lease). Called with numkeys = 2 * number of keys.

KEYS[1], KEYS[3] ...  record hash of key 1, 2, ... (KEYS[2i-1] for key i)
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
local function int(n) return string.format('%d', n) end
-- beginOne: the begin transition of one key (see begin-2.lua for the codes). \`full\` asks for the
-- whole record hash with a busy answer; batches answer busy with the lease end only.
-- Returns code, payload: 'N' { fence, leaseUntil }; 'R'/'T' the record hash after the write;
-- 'B' the record hash, or { leaseUntil } when not \`full\`; 'D'/'F'/'M' the record hash;
-- 'K'/'X' the compaction marker.
-- \`name\` is the store key itself: kept in 'k' with the attempt's start time 'b' while the record is
-- IN_PROGRESS (complete and fail rewrite the hash without them), for listInProgress.
local function beginOne(rec, bucket, fp, owner, lease, trace, ttl, id, fphash, now, full, name)
  local h = rcall('HMGET', rec, 's', 'f', 'n', 'a', 'l', 'x')
  local state = h[1]
  -- COMPLETED and FAILED records are logically gone at their expiry, though still stored for a grace.
  local live = state == 'I' or (state and tonumber(h[6]) > now)

  if live then
    -- A different payload under the same key is reported whatever the state.
    if h[2] ~= fp then return 'M', rcall('HGETALL', rec) end
    if state == 'C' then return 'D', rcall('HGETALL', rec) end
    if state == 'F' then return 'F', rcall('HGETALL', rec) end
    local leaseUntil = tonumber(h[5])
    if leaseUntil > now then
      if full then return 'B', rcall('HGETALL', rec) end
      return 'B', { leaseUntil }
    end
    -- leaseUntil 0 means released after a retryable error; any other past value, a lapsed holder.
    local code = 'T'
    if leaseUntil == 0 then code = 'R' end
    leaseUntil = now + lease
    rcall('HSET', rec, 'n', int(tonumber(h[3]) + 1), 'a', int(tonumber(h[4]) + 1), 'w', owner,
      'l', int(leaseUntil), 'k', name, 'b', int(now))
    if trace == '' then rcall('HDEL', rec, 't') else rcall('HSET', rec, 't', trace) end
    rcall('PEXPIREAT', rec, int(leaseUntil + ttl))
    return code, rcall('HGETALL', rec)
  end

  -- Fences of new records start at the server clock, so they do not repeat even after the old
  -- record is gone; an expired record still stored also guards against a clock stepping back.
  local fence = now
  if state then
    fence = math.max(now, tonumber(h[3]) + 1)
    rcall('DEL', rec)
  else
    -- No record: a compacted one may still answer "already processed".
    local marker = rcall('HGET', bucket, id)
    if marker then
      if struct.unpack('>I6', marker) > now then
        if string.sub(marker, 7) ~= fphash then return 'X', marker end
        return 'K', marker
      end
      rcall('HDEL', bucket, id)
    end
  end

  local leaseUntil = now + lease
  if trace ~= '' then
    rcall('HSET', rec, 's', 'I', 'f', fp, 'n', int(fence), 'a', '1', 'w', owner, 'l', int(leaseUntil), 't', trace,
      'k', name, 'b', int(now))
  else
    rcall('HSET', rec, 's', 'I', 'f', fp, 'n', int(fence), 'a', '1', 'w', owner, 'l', int(leaseUntil),
      'k', name, 'b', int(now))
  end
  rcall('PEXPIREAT', rec, int(leaseUntil + ttl))
  return 'N', { fence, leaseUntil }
end

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
`,
  },
  clear: {
    command: 'eoClear_v1_4c34870a',
    numberOfKeys: 3,
    sha1: '4c34870ace60f7574640bb9ff454dfb8478118f2',
    lua: `--[[
clear: forget a key's record (or its compaction marker), so the next message with the key runs
anew: an operator's step before replaying a dead letter whose record is FAILED, or re-running
a COMPLETED one on purpose. A record held under a live lease is left alone.

KEYS[1]  record hash
KEYS[2]  compaction-marker bucket of the key's hash tag
KEYS[3]  completion index of the key's hash tag
ARGV[1]  record id (16 bytes): the key's field in the marker bucket and index member
ARGV[2]  grace (ms) the cleared record is kept as an expired tombstone

The record is not deleted but replaced by an expired tombstone holding only its fence, kept for
the grace: the next begin reads it as absent and still starts above its fence, even within the
same millisecond.

Returns:
  1  cleared: the record or its marker was forgotten
  0  absent: nothing was stored for the key (or only an expired record)
 -1  busy: the record is IN_PROGRESS under a live lease (nothing changed)
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec, bucket, index = KEYS[1], KEYS[2], KEYS[3]

local h = rcall('HMGET', rec, 's', 'l', 'n', 'x')
if h[1] == 'I' and tonumber(h[2]) > now then return -1 end
local live = h[1] == 'I' or (h[1] and tonumber(h[4]) > now)
local removed = rcall('HDEL', bucket, ARGV[1])
rcall('ZREM', index, ARGV[1])
if h[1] then
  rcall('DEL', rec)
  rcall('HSET', rec, 's', 'F', 'n', h[3], 'x', '0', 'f', '')
  rcall('PEXPIREAT', rec, string.format('%d', now + tonumber(ARGV[2])))
end
if live or removed > 0 then return 1 end
return 0
`,
  },
  compactCandidates: {
    command: 'eoCompactCandidates_v1_6dcaf1a3',
    numberOfKeys: 1,
    sha1: '6dcaf1a3c9f0fda094eb98db80b551451c36c9a1',
    lua: `--[[
compactCandidates: the oldest entries of one tag's completion index, as binary-safe ids.

KEYS[1]  completion index of the tag (sorted set: record id -> completedAt)
ARGV[1]  how many entries to return

Returns a list of record ids (16 bytes each), oldest completion first; empty when none.
]]
local rcall = redis.call
return rcall('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
`,
  },
  compactCompleted: {
    command: 'eoCompactCompleted_v1_a824864a',
    numberOfKeys: undefined,
    sha1: 'a824864a5168ab3c639108c9a544487647389c8b',
    lua: `--[[
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
`,
  },
  complete: {
    command: 'eoComplete_v1_46b6fc7b',
    numberOfKeys: 3,
    sha1: '46b6fc7b38bb32a3077e0ad348ec2d776304cc82',
    lua: `--[[
complete: IN_PROGRESS(fence) -> COMPLETED with result and outgoing messages, in one write.

KEYS[1]  record hash
KEYS[2]  completion index of the key's hash tag (sorted set member -> completedAt)
KEYS[3]  blob index of the key's hash tag (sorted set: packed blob pointer -> the record's physical end)
ARGV[1]  fence
ARGV[2]  retention (ms): the record answers duplicates until server now + retention
ARGV[3]  grace (ms) the record is physically kept past its expiry, to continue its fence
ARGV[4]  trace id (encoded; '' = keep the stored one)
ARGV[5]  result (encoded; '' = none)
ARGV[6]  record id, the index member ('' = not indexed for compaction)
ARGV[7], ARGV[8] ...  per outgoing message: id, message (encoded)

The new record replaces the old hash whole, which drops the journaled steps. Messages are
stored as 'd<i>' = id, 'o<i>' = message, and 'p<i>' once published; 'm' = their count.

Returns:
  1  ok
  0  lost: the record is not IN_PROGRESS under this fence
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function int(n) return string.format('%d', n) end
-- completeOne: IN_PROGRESS(fence) -> COMPLETED of one key (see complete-2.lua). Its outgoing
-- messages are ARGV[first], ARGV[first + 1], ... : \`count\` pairs of id, message.
-- Returns 1 (ok) or 0 (lost).
-- A blob result's pointer goes into \`blobs\` (the tag's blob index: member = packed pointer, score
-- = the record's physical end), so collectBlobs can delete the blob once no record names it.
local function completeOne(rec, index, blobs, fence, retention, grace, trace, result, id, first, count, now)
  local h = rcall('HMGET', rec, 's', 'n', 'f', 'a', 't')
  if h[1] ~= 'I' or h[2] ~= fence then return 0 end
  local expiresAt = now + retention
  local physicalEnd = int(expiresAt + grace)
  if trace == '' then trace = h[5] end

  local fields = { 's', 'C', 'f', h[3], 'n', h[2], 'a', h[4], 'c', int(now), 'x', int(expiresAt) }
  if trace then
    fields[#fields + 1] = 't'
    fields[#fields + 1] = trace
  end
  if result ~= '' then
    fields[#fields + 1] = 'r'
    fields[#fields + 1] = result
  end
  if count > 0 then
    fields[#fields + 1] = 'm'
    fields[#fields + 1] = int(count)
  end
  -- The new record replaces the old hash whole, which drops the lease and the journaled steps.
  rcall('DEL', rec)
  for i = 1, count do
    fields[#fields + 1] = 'd' .. i
    fields[#fields + 1] = ARGV[first + 2 * i - 2]
    fields[#fields + 1] = 'o' .. i
    fields[#fields + 1] = ARGV[first + 2 * i - 1]
    -- In chunks: unpack() of thousands of values would overflow Lua's C stack.
    if #fields >= 400 then
      rcall('HSET', rec, unpack(fields))
      fields = {}
    end
  end
  if #fields > 0 then rcall('HSET', rec, unpack(fields)) end
  rcall('PEXPIREAT', rec, physicalEnd)

  if string.sub(result, 1, 1) == 'b' then rcall('ZADD', blobs, 'GT', physicalEnd, result) end

  if id ~= '' then
    rcall('ZADD', index, int(now), id)
    -- The index lives as long as its newest record; compaction prunes it meanwhile.
    local ttl = rcall('PTTL', index)
    if ttl < 0 or now + ttl < tonumber(physicalEnd) then rcall('PEXPIREAT', index, physicalEnd) end
  end
  return 1
end

return completeOne(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5],
  ARGV[6], 7, (#ARGV - 6) / 2, now)
`,
  },
  completeMany: {
    command: 'eoCompleteMany_v1_78d3ddcf',
    numberOfKeys: undefined,
    sha1: '78d3ddcf84986f461041932ecd200be82407b234',
    lua: `--[[
completeMany: complete several keys in one call, in order, each exactly as complete-2.lua would.
Called with numkeys = 3 * number of keys.

KEYS[1], KEYS[4] ...  record hash of key 1, 2, ... (KEYS[3i-2] for key i)
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
local function int(n) return string.format('%d', n) end
-- completeOne: IN_PROGRESS(fence) -> COMPLETED of one key (see complete-2.lua). Its outgoing
-- messages are ARGV[first], ARGV[first + 1], ... : \`count\` pairs of id, message.
-- Returns 1 (ok) or 0 (lost).
-- A blob result's pointer goes into \`blobs\` (the tag's blob index: member = packed pointer, score
-- = the record's physical end), so collectBlobs can delete the blob once no record names it.
local function completeOne(rec, index, blobs, fence, retention, grace, trace, result, id, first, count, now)
  local h = rcall('HMGET', rec, 's', 'n', 'f', 'a', 't')
  if h[1] ~= 'I' or h[2] ~= fence then return 0 end
  local expiresAt = now + retention
  local physicalEnd = int(expiresAt + grace)
  if trace == '' then trace = h[5] end

  local fields = { 's', 'C', 'f', h[3], 'n', h[2], 'a', h[4], 'c', int(now), 'x', int(expiresAt) }
  if trace then
    fields[#fields + 1] = 't'
    fields[#fields + 1] = trace
  end
  if result ~= '' then
    fields[#fields + 1] = 'r'
    fields[#fields + 1] = result
  end
  if count > 0 then
    fields[#fields + 1] = 'm'
    fields[#fields + 1] = int(count)
  end
  -- The new record replaces the old hash whole, which drops the lease and the journaled steps.
  rcall('DEL', rec)
  for i = 1, count do
    fields[#fields + 1] = 'd' .. i
    fields[#fields + 1] = ARGV[first + 2 * i - 2]
    fields[#fields + 1] = 'o' .. i
    fields[#fields + 1] = ARGV[first + 2 * i - 1]
    -- In chunks: unpack() of thousands of values would overflow Lua's C stack.
    if #fields >= 400 then
      rcall('HSET', rec, unpack(fields))
      fields = {}
    end
  end
  if #fields > 0 then rcall('HSET', rec, unpack(fields)) end
  rcall('PEXPIREAT', rec, physicalEnd)

  if string.sub(result, 1, 1) == 'b' then rcall('ZADD', blobs, 'GT', physicalEnd, result) end

  if id ~= '' then
    rcall('ZADD', index, int(now), id)
    -- The index lives as long as its newest record; compaction prunes it meanwhile.
    local ttl = rcall('PTTL', index)
    if ttl < 0 or now + ttl < tonumber(physicalEnd) then rcall('PEXPIREAT', index, physicalEnd) end
  end
  return 1
end

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
`,
  },
  extend: {
    command: 'eoExtend_v1_ac5a78aa',
    numberOfKeys: 1,
    sha1: 'ac5a78aa1314ae79012175a1c77a4e941b1140dc',
    lua: `--[[
extend: push the lease of the holding fence out to server now + lease.

KEYS[1]  record hash
ARGV[1]  fence
ARGV[2]  lease (ms)
ARGV[3]  safety TTL of an IN_PROGRESS record past its lease end (ms)

Returns:
  1  ok
  0  lost: the record is not IN_PROGRESS under this fence
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec = KEYS[1]

local h = rcall('HMGET', rec, 's', 'n')
-- Fences are written as canonical decimal strings, so comparing text compares numbers.
if h[1] ~= 'I' or h[2] ~= ARGV[1] then return 0 end
local leaseUntil = now + tonumber(ARGV[2])
rcall('HSET', rec, 'l', string.format('%d', leaseUntil))
rcall('PEXPIREAT', rec, string.format('%d', leaseUntil + tonumber(ARGV[3])))
return 1
`,
  },
  fail: {
    command: 'eoFail_v1_ccbeba29',
    numberOfKeys: 1,
    sha1: 'ccbeba29da0d301adf9fcd7d34d84460f4fa8d4b',
    lua: `--[[
fail: IN_PROGRESS(fence) -> FAILED, kept for the retention.

KEYS[1]  record hash
ARGV[1]  fence
ARGV[2]  error (encoded)
ARGV[3]  retention (ms)
ARGV[4]  grace (ms) the record is physically kept past its expiry, to continue its fence

The new record replaces the old hash whole, which drops the journaled steps.

Returns:
  1  ok
  0  lost: the record is not IN_PROGRESS under this fence
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec = KEYS[1]
local function int(n) return string.format('%d', n) end

local h = rcall('HMGET', rec, 's', 'n', 'f', 'a', 't')
if h[1] ~= 'I' or h[2] ~= ARGV[1] then return 0 end
local expiresAt = now + tonumber(ARGV[3])
rcall('DEL', rec)
rcall('HSET', rec, 's', 'F', 'f', h[3], 'n', h[2], 'a', h[4], 'e', ARGV[2], 'c', int(now),
  'x', int(expiresAt))
if h[5] then rcall('HSET', rec, 't', h[5]) end
rcall('PEXPIREAT', rec, int(expiresAt + tonumber(ARGV[4])))
return 1
`,
  },
  get: {
    command: 'eoGet_v1_047cd5b3',
    numberOfKeys: 2,
    sha1: '047cd5b3068327975a44367dd5759a025ed95d41',
    lua: `--[[
get: read a record, or the compaction marker standing in for it, with the server clock.

KEYS[1]  record hash
KEYS[2]  compaction-marker bucket of the key's hash tag
ARGV[1]  record id (16 bytes): the key's field in the marker bucket

Returns { server now (ms), record hash (HGETALL; empty when absent), marker value or nil }.
The marker is read only when the record is absent. Expiry is judged by the caller against
the returned server time.
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local record = rcall('HGETALL', KEYS[1])
local marker = false
if #record == 0 then marker = rcall('HGET', KEYS[2], ARGV[1]) end
return { now, record, marker }
`,
  },
  markPublished: {
    command: 'eoMarkPublished_v1_d701a2e4',
    numberOfKeys: 1,
    sha1: 'd701a2e45da115ea61f1b50363abc64634a76d49',
    lua: `--[[
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
`,
  },
  markPublishedMany: {
    command: 'eoMarkPublishedMany_v1_957045d8',
    numberOfKeys: undefined,
    sha1: '957045d814965b73318d6f7d9ac972d4348ff82b',
    lua: `--[[
markPublishedMany: markPublished-1.lua for several records in one call.
Called with numkeys = number of records.

KEYS[1] ...  record hash of each record, in order
ARGV: per record, in order: fence it was completed under, id count n, then n message ids

Returns the number of messages newly flagged in all.
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local flagged = 0
local a = 1
for k = 1, #KEYS do
  local rec, fence, n = KEYS[k], ARGV[a], tonumber(ARGV[a + 1])
  local h = rcall('HMGET', rec, 's', 'x', 'm', 'n')
  local count = tonumber(h[3]) or 0
  if h[1] == 'C' and tonumber(h[2]) > now and h[4] == fence and count > 0 and n > 0 then
    local wanted = {}
    for i = 1, n do wanted[ARGV[a + 1 + i]] = true end
    for i = 1, count do
      if wanted[rcall('HGET', rec, 'd' .. i)] then flagged = flagged + rcall('HSET', rec, 'p' .. i, '1') end
    end
  end
  a = a + 2 + n
end
return flagged
`,
  },
  markStepStarted: {
    command: 'eoMarkStepStarted_v1_f60928ea',
    numberOfKeys: 1,
    sha1: 'f60928ea2493f1f5fb7356ee94dec50a4406b771',
    lua: `--[[
markStepStarted: journal that a step is about to run, under the IN_PROGRESS record held by the
fence, so a later attempt knows the step is in doubt (see ctx.step's reconcile).

KEYS[1]  record hash
ARGV[1]  fence
ARGV[2]  step name

Stored as field 'S' .. name = '<server now ms>' (no ':' and no result: started, not done); a
later saveStep of the name overwrites it with '<at>:' .. result.

Returns:
  1  ok
  0  lost: the record is not IN_PROGRESS under this fence
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec = KEYS[1]

local h = rcall('HMGET', rec, 's', 'n')
if h[1] ~= 'I' or h[2] ~= ARGV[1] then return 0 end
rcall('HSET', rec, 'S' .. ARGV[2], string.format('%d', now))
return 1
`,
  },
  release: {
    command: 'eoRelease_v1_6369425b',
    numberOfKeys: 1,
    sha1: '6369425b852947100537e1b69e02f7342aaa8fd2',
    lua: `--[[
release: give the lease up after a retryable error; the next begin acquires at once (retry).

KEYS[1]  record hash
ARGV[1]  fence
ARGV[2]  error (encoded)
ARGV[3]  safety TTL of an IN_PROGRESS record past its lease end (ms)

Returns:
  1  ok
  0  lost: the record is not IN_PROGRESS under this fence
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec = KEYS[1]

local h = rcall('HMGET', rec, 's', 'n')
if h[1] ~= 'I' or h[2] ~= ARGV[1] then return 0 end
-- Steps and attempt stay: the retry continues where this attempt stopped.
rcall('HSET', rec, 'l', '0', 'e', ARGV[2])
rcall('PEXPIREAT', rec, string.format('%d', now + tonumber(ARGV[3])))
return 1
`,
  },
  saveStep: {
    command: 'eoSaveStep_v1_737206e4',
    numberOfKeys: 1,
    sha1: '737206e4d6267c25291cdb41d71db5cad0ad6782',
    lua: `--[[
saveStep: journal a step's result under the IN_PROGRESS record held by the fence.

KEYS[1]  record hash
ARGV[1]  fence
ARGV[2]  step name
ARGV[3]  step result (bytes)

Stored as field 'S' .. name = '<server now ms>:' .. result.

Returns:
  1  ok
  0  lost: the record is not IN_PROGRESS under this fence
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec = KEYS[1]

local h = rcall('HMGET', rec, 's', 'n')
if h[1] ~= 'I' or h[2] ~= ARGV[1] then return 0 end
rcall('HSET', rec, 'S' .. ARGV[2], string.format('%d', now) .. ':' .. ARGV[3])
return 1
`,
  },
} as const satisfies Record<string, LuaScript>;
