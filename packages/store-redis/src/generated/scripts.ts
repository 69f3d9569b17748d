// Generated from src/lua/*.lua by scripts/generate-lua.mjs (npm run generate). Do not edit.

/** A Lua script and the ioredis command it is registered as. */
export interface LuaScript {
  readonly command: string;
  /** Fixed key count, or undefined when the caller passes numkeys first. */
  readonly numberOfKeys: number | undefined;
  readonly sha1: string;
  readonly lua: string;
}

export const LAYOUT_VERSION = 2;

export const scripts = {
  begin: {
    command: 'eoBegin_v2_f4b86ad6',
    numberOfKeys: 2,
    sha1: 'f4b86ad6c488363fb3c12401fe3bc51005a76f7b',
    lua: `--[[
begin: claim the record of one key for an attempt, or say why not.

KEYS[1]  record of the key
KEYS[2]  compaction-marker bucket of the key's hash tag
ARGV[1]  fingerprint (encoded)
ARGV[2]  owner
ARGV[3]  lease (ms)
ARGV[4]  trace id (encoded; '' = none)
ARGV[5]  safety TTL of an IN_PROGRESS record past its lease end (ms)
ARGV[6]  record id (16 bytes): the key's field in the marker bucket
ARGV[7]  the store key itself (kept while IN_PROGRESS, for listInProgress)

A new record's fence is max(server now in ms, previous fence + 1); takeover and retry add 1.

Returns { code, server now (ms), payload }:
  'N'  acquired, kind new       payload = fence (the lease ends at server now + lease)
  'R'  acquired, kind retry     payload = the record after the write
  'T'  acquired, kind takeover  payload = the record after the write
  'B'  busy                     payload = the stored record
  'D'  duplicate                payload = the stored record
  'F'  failed                   payload = the stored record
  'M'  mismatch                 payload = the stored record
  'K'  duplicate of a compacted record   payload = marker value
  'X'  mismatch with a compacted record  payload = marker value
A record payload is { packed record (includes/record.lua), its extras hash (flat; empty if none) }.
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The record: one Redis string (see codec.ts for the same layout in TypeScript). All integers
-- big-endian; strings length-prefixed (4 bytes).
--
--   state 1 byte 'I' | 'C' | 'F', fence 6, attempt 4, t1 6, t2 6, flags 1, fingerprint, trace id
--   IN_PROGRESS then: owner, the store key itself (for listInProgress)
--   COMPLETED then:   result
--
-- t1/t2: IN_PROGRESS leaseUntil (0 = released) / the attempt's start; COMPLETED and FAILED
-- completedAt or failedAt / expiresAt. flags 1: the record has an extras hash, named the record's
-- name + 'x' (same hash tag, so the same cluster slot), expiring with it, holding what the hot
-- path never writes: journaled steps 'S<name>', the error 'e', outgoing messages ('m' count,
-- 'd<i>' id, 'o<i>' message, 'p<i>' once published).
--
-- Records of the previous layout (one hash with one-letter fields) are converted when first
-- touched: loadRecord answers them like any other, in the new layout from then on.
local HEAD = '>c1I6I4I6I6BI4c0I4c0'
-- Whole records of the hot path, packed in one call without a table: an IN_PROGRESS record
-- (HEAD, owner, store key) and a COMPLETED one (HEAD, result).
local IN_PROGRESS_RECORD = HEAD .. 'I4c0I4c0'
local COMPLETED_RECORD = HEAD .. 'I4c0'

local function int(n) return string.format('%d', n) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
end

-- What a compaction marker keeps of a fingerprint (encoded): the first 8 bytes of its sha1.
local function markerFingerprint(encoded)
  local hex = redis.sha1hex(encoded)
  local out = {}
  for i = 1, 16, 2 do out[#out + 1] = string.char(tonumber(string.sub(hex, i, i + 1), 16)) end
  return table.concat(out)
end

local function packRecord(r)
  local head = struct.pack(HEAD, r.s, r.n, r.a, r.t1, r.t2, r.flags, #r.f, r.f, #r.t, r.t)
  if r.s == 'I' then return head .. struct.pack('>I4c0I4c0', #r.w, r.w, #r.k, r.k) end
  if r.s == 'C' then return head .. struct.pack('>I4c0', #r.r, r.r) end
  return head
end

-- \`headOnly\`: without the owner, the store key and the result (a caller that replaces the
-- record whole and answers no record needs none of them).
local function unpackRecord(v, headOnly)
  local s, n, a, t1, t2, flags, f, t, pos = struct.unpack(HEAD, v)
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = struct.unpack('>I4c0I4c0', v, pos)
  elseif s == 'C' then
    r.r = struct.unpack('>I4c0', v, pos)
  end
  return r
end

-- HSET in chunks: unpack() of thousands of values would overflow Lua's C stack.
local function hsetAll(key, fields)
  for i = 1, #fields, 400 do
    rcall('HSET', key, unpack(fields, i, math.min(i + 399, #fields)))
  end
end

local LEGACY_CORE = { s = true, f = true, n = true, a = true, w = true, l = true, k = true, b = true, c = true,
  x = true, t = true, r = true }

-- A record of the previous layout: rewritten in this one, with the same expiry.
local function convertLegacy(rec)
  local all = rcall('HGETALL', rec)
  local h, extras = {}, {}
  for i = 1, #all, 2 do
    if LEGACY_CORE[all[i]] then
      h[all[i]] = all[i + 1]
    else
      extras[#extras + 1] = all[i]
      extras[#extras + 1] = all[i + 1]
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s or 'F', n = tonumber(h.n) or 0, a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
    flags = 0 }
  if r.s == 'I' then
    r.t1, r.t2, r.w, r.k = tonumber(h.l) or 0, tonumber(h.b) or 0, h.w or '', h.k or ''
  else
    r.t1, r.t2, r.r = tonumber(h.c) or 0, tonumber(h.x) or 0, h.r or ''
  end
  if #extras > 0 then
    r.flags = 1
    hsetAll(rec .. 'x', extras)
    if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
  end
  if at > 0 then
    rcall('SET', rec, packRecord(r), 'PXAT', at)
  else
    rcall('SET', rec, packRecord(r))
  end
  return r
end

-- The packed record stored at \`rec\`, or nil; a record of the previous layout is converted first.
local function loadPacked(rec)
  local v = redis.pcall('GET', rec)
  if type(v) == 'table' then
    if v.err and string.find(v.err, 'WRONGTYPE', 1, true) then return packRecord(convertLegacy(rec)) end
    error(v.err)
  end
  if not v then return nil end
  return v
end

-- The record stored at \`rec\`, or nil (see unpackRecord for \`headOnly\`).
local function loadRecord(rec, headOnly)
  local v = loadPacked(rec)
  if not v then return nil end
  return unpackRecord(v, headOnly)
end

-- Writes \`r\` whole, expiring at \`at\` (ms), its extras hash with it.
local function saveRecord(rec, r, at)
  rcall('SET', rec, packRecord(r), 'PXAT', int(at))
  if r.flags == 1 then rcall('PEXPIREAT', rec .. 'x', int(at)) end
end

-- Drops the extras hash (steps, error, messages) of a record about to be replaced.
local function dropExtras(rec, r)
  if r.flags == 1 then
    rcall('DEL', rec .. 'x')
    r.flags = 0
  end
end

-- The extras hash of \`r\`, flagged on the record (same expiry) when it had none.
local function extrasOf(rec, r)
  local ext = rec .. 'x'
  if r.flags ~= 1 then
    r.flags = 1
    rcall('SET', rec, packRecord(r), 'KEEPTTL')
  end
  return ext
end

-- Gives the extras hash the record's expiry (after a write that may have created it).
local function expireExtrasWithRecord(rec)
  local at = rcall('PEXPIRETIME', rec)
  if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
end

-- What a script answers for a stored record: { packed record, extras hash (flat; empty if none) }.
-- \`packed\`: the record as stored, when \`r\` is unchanged (no need to pack it again).
local function recordReply(rec, r, packed)
  local extras = {}
  if r.flags == 1 then extras = rcall('HGETALL', rec .. 'x') end
  return { packed or packRecord(r), extras }
end
-- beginOne: the begin transition of one key (see begin-2.lua for the codes). \`full\` asks for the
-- whole record with a busy answer; batches answer busy with the lease end only.
-- Returns code, payload: 'N' the fence (its lease ends at now + lease); 'R'/'T' the record after the write;
-- 'B' the record, or { leaseUntil } when not \`full\`; 'D'/'F'/'M' the record ({ packed, extras });
-- 'K'/'X' the compaction marker.
-- \`name\` is the store key itself: kept with the attempt's start time while the record is
-- IN_PROGRESS (complete and fail write records without them), for listInProgress.
local function beginOne(rec, bucket, fp, owner, lease, trace, ttl, id, now, full, name)
  local packed = loadPacked(rec)
  -- Fences of new records start at the server clock, so they do not repeat even after the old
  -- record is gone; an expired record still stored also guards against a clock stepping back.
  local fence = now
  if packed then
    local r = unpackRecord(packed, true)
    -- COMPLETED and FAILED records are logically gone at their expiry, though still stored for a grace.
    if r.s == 'I' or r.t2 > now then
      -- A different payload under the same key is reported whatever the state.
      if r.f ~= fp then return 'M', recordReply(rec, r, packed) end
      if r.s == 'C' then return 'D', recordReply(rec, r, packed) end
      if r.s == 'F' then return 'F', recordReply(rec, r, packed) end
      if r.t1 > now then
        if full then return 'B', recordReply(rec, r, packed) end
        return 'B', { r.t1 }
      end
      -- leaseUntil 0 means released after a retryable error; any other past value, a lapsed holder.
      -- Steps and the last error (extras) stay: the attempt continues where the last one stopped.
      local code = 'T'
      if r.t1 == 0 then code = 'R' end
      r.n, r.a, r.w, r.t1, r.t2, r.t, r.k = r.n + 1, r.a + 1, owner, now + lease, now, trace, name
      saveRecord(rec, r, r.t1 + ttl)
      return code, recordReply(rec, r)
    end
    fence = math.max(now, r.n + 1)
    dropExtras(rec, r)
  else
    -- No record: a compacted one may still answer "already processed".
    local marker = rcall('HGET', bucket, id)
    if marker then
      if struct.unpack('>I6', marker) > now then
        if string.sub(marker, 7) ~= markerFingerprint(fp) then return 'X', marker end
        return 'K', marker
      end
      rcall('HDEL', bucket, id)
    end
  end

  -- The new record, packed directly: the path of every new key.
  local leaseUntil = now + lease
  rcall('SET', rec, struct.pack(IN_PROGRESS_RECORD, 'I', fence, 1, leaseUntil, now, 0, #fp, fp, #trace, trace,
    #owner, owner, #name, name), 'PXAT', intAt(leaseUntil + ttl))
  return 'N', fence
end

local code, payload = beginOne(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4],
  tonumber(ARGV[5]), ARGV[6], now, true, ARGV[7])
return { code, now, payload }
`,
  },
  beginMany: {
    command: 'eoBeginMany_v2_22145d6e',
    numberOfKeys: undefined,
    sha1: '22145d6e95cf5f0c6a2cedd185ba1fa5d122033a',
    lua: `#!lua flags=allow-cross-slot-keys
--[[
beginMany: begin several keys in one call, in order, each exactly as begin-2.lua would (the same
key twice: the second sees the first's lease). Called with numkeys = 1.

KEYS[1]  the first key's record: it routes the call (on a Cluster, to the node of its slot)
ARGV[1]  safety TTL of an IN_PROGRESS record past its lease end (ms)
ARGV[2]  per key, in order, five length-prefixed strings (4-byte big-endian length, then the
         bytes): its record's name, fingerprint (encoded), trace id (encoded; '' = none), the store
         key itself (kept while IN_PROGRESS, for listInProgress), owner; then its lease in ms (6
         bytes, big-endian)

A key's marker bucket and id are derived from its record's name (see layout.ts). One packed
argument instead of several per key: most of a call's cost on the client is building its
arguments, and one call per batch (per node on a Cluster, hence allow-cross-slot-keys) is most of
the saving on the server. On a Cluster a record on another node stops the script with an error
at that key (after a resharding, until the client's slot map catches up); the keys before it are
begun, but their answers are lost with the error, like a lost reply: the retry finds its own
lease and waits it out.

Returns { server now (ms), code 1, payload 1, code 2, payload 2, ... } with the codes and
payloads of begin-2.lua, except busy: payload = { leaseUntil } (no record read).
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The record: one Redis string (see codec.ts for the same layout in TypeScript). All integers
-- big-endian; strings length-prefixed (4 bytes).
--
--   state 1 byte 'I' | 'C' | 'F', fence 6, attempt 4, t1 6, t2 6, flags 1, fingerprint, trace id
--   IN_PROGRESS then: owner, the store key itself (for listInProgress)
--   COMPLETED then:   result
--
-- t1/t2: IN_PROGRESS leaseUntil (0 = released) / the attempt's start; COMPLETED and FAILED
-- completedAt or failedAt / expiresAt. flags 1: the record has an extras hash, named the record's
-- name + 'x' (same hash tag, so the same cluster slot), expiring with it, holding what the hot
-- path never writes: journaled steps 'S<name>', the error 'e', outgoing messages ('m' count,
-- 'd<i>' id, 'o<i>' message, 'p<i>' once published).
--
-- Records of the previous layout (one hash with one-letter fields) are converted when first
-- touched: loadRecord answers them like any other, in the new layout from then on.
local HEAD = '>c1I6I4I6I6BI4c0I4c0'
-- Whole records of the hot path, packed in one call without a table: an IN_PROGRESS record
-- (HEAD, owner, store key) and a COMPLETED one (HEAD, result).
local IN_PROGRESS_RECORD = HEAD .. 'I4c0I4c0'
local COMPLETED_RECORD = HEAD .. 'I4c0'

local function int(n) return string.format('%d', n) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
end

-- What a compaction marker keeps of a fingerprint (encoded): the first 8 bytes of its sha1.
local function markerFingerprint(encoded)
  local hex = redis.sha1hex(encoded)
  local out = {}
  for i = 1, 16, 2 do out[#out + 1] = string.char(tonumber(string.sub(hex, i, i + 1), 16)) end
  return table.concat(out)
end

local function packRecord(r)
  local head = struct.pack(HEAD, r.s, r.n, r.a, r.t1, r.t2, r.flags, #r.f, r.f, #r.t, r.t)
  if r.s == 'I' then return head .. struct.pack('>I4c0I4c0', #r.w, r.w, #r.k, r.k) end
  if r.s == 'C' then return head .. struct.pack('>I4c0', #r.r, r.r) end
  return head
end

-- \`headOnly\`: without the owner, the store key and the result (a caller that replaces the
-- record whole and answers no record needs none of them).
local function unpackRecord(v, headOnly)
  local s, n, a, t1, t2, flags, f, t, pos = struct.unpack(HEAD, v)
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = struct.unpack('>I4c0I4c0', v, pos)
  elseif s == 'C' then
    r.r = struct.unpack('>I4c0', v, pos)
  end
  return r
end

-- HSET in chunks: unpack() of thousands of values would overflow Lua's C stack.
local function hsetAll(key, fields)
  for i = 1, #fields, 400 do
    rcall('HSET', key, unpack(fields, i, math.min(i + 399, #fields)))
  end
end

local LEGACY_CORE = { s = true, f = true, n = true, a = true, w = true, l = true, k = true, b = true, c = true,
  x = true, t = true, r = true }

-- A record of the previous layout: rewritten in this one, with the same expiry.
local function convertLegacy(rec)
  local all = rcall('HGETALL', rec)
  local h, extras = {}, {}
  for i = 1, #all, 2 do
    if LEGACY_CORE[all[i]] then
      h[all[i]] = all[i + 1]
    else
      extras[#extras + 1] = all[i]
      extras[#extras + 1] = all[i + 1]
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s or 'F', n = tonumber(h.n) or 0, a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
    flags = 0 }
  if r.s == 'I' then
    r.t1, r.t2, r.w, r.k = tonumber(h.l) or 0, tonumber(h.b) or 0, h.w or '', h.k or ''
  else
    r.t1, r.t2, r.r = tonumber(h.c) or 0, tonumber(h.x) or 0, h.r or ''
  end
  if #extras > 0 then
    r.flags = 1
    hsetAll(rec .. 'x', extras)
    if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
  end
  if at > 0 then
    rcall('SET', rec, packRecord(r), 'PXAT', at)
  else
    rcall('SET', rec, packRecord(r))
  end
  return r
end

-- The packed record stored at \`rec\`, or nil; a record of the previous layout is converted first.
local function loadPacked(rec)
  local v = redis.pcall('GET', rec)
  if type(v) == 'table' then
    if v.err and string.find(v.err, 'WRONGTYPE', 1, true) then return packRecord(convertLegacy(rec)) end
    error(v.err)
  end
  if not v then return nil end
  return v
end

-- The record stored at \`rec\`, or nil (see unpackRecord for \`headOnly\`).
local function loadRecord(rec, headOnly)
  local v = loadPacked(rec)
  if not v then return nil end
  return unpackRecord(v, headOnly)
end

-- Writes \`r\` whole, expiring at \`at\` (ms), its extras hash with it.
local function saveRecord(rec, r, at)
  rcall('SET', rec, packRecord(r), 'PXAT', int(at))
  if r.flags == 1 then rcall('PEXPIREAT', rec .. 'x', int(at)) end
end

-- Drops the extras hash (steps, error, messages) of a record about to be replaced.
local function dropExtras(rec, r)
  if r.flags == 1 then
    rcall('DEL', rec .. 'x')
    r.flags = 0
  end
end

-- The extras hash of \`r\`, flagged on the record (same expiry) when it had none.
local function extrasOf(rec, r)
  local ext = rec .. 'x'
  if r.flags ~= 1 then
    r.flags = 1
    rcall('SET', rec, packRecord(r), 'KEEPTTL')
  end
  return ext
end

-- Gives the extras hash the record's expiry (after a write that may have created it).
local function expireExtrasWithRecord(rec)
  local at = rcall('PEXPIRETIME', rec)
  if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
end

-- What a script answers for a stored record: { packed record, extras hash (flat; empty if none) }.
-- \`packed\`: the record as stored, when \`r\` is unchanged (no need to pack it again).
local function recordReply(rec, r, packed)
  local extras = {}
  if r.flags == 1 then extras = rcall('HGETALL', rec .. 'x') end
  return { packed or packRecord(r), extras }
end
-- beginOne: the begin transition of one key (see begin-2.lua for the codes). \`full\` asks for the
-- whole record with a busy answer; batches answer busy with the lease end only.
-- Returns code, payload: 'N' the fence (its lease ends at now + lease); 'R'/'T' the record after the write;
-- 'B' the record, or { leaseUntil } when not \`full\`; 'D'/'F'/'M' the record ({ packed, extras });
-- 'K'/'X' the compaction marker.
-- \`name\` is the store key itself: kept with the attempt's start time while the record is
-- IN_PROGRESS (complete and fail write records without them), for listInProgress.
local function beginOne(rec, bucket, fp, owner, lease, trace, ttl, id, now, full, name)
  local packed = loadPacked(rec)
  -- Fences of new records start at the server clock, so they do not repeat even after the old
  -- record is gone; an expired record still stored also guards against a clock stepping back.
  local fence = now
  if packed then
    local r = unpackRecord(packed, true)
    -- COMPLETED and FAILED records are logically gone at their expiry, though still stored for a grace.
    if r.s == 'I' or r.t2 > now then
      -- A different payload under the same key is reported whatever the state.
      if r.f ~= fp then return 'M', recordReply(rec, r, packed) end
      if r.s == 'C' then return 'D', recordReply(rec, r, packed) end
      if r.s == 'F' then return 'F', recordReply(rec, r, packed) end
      if r.t1 > now then
        if full then return 'B', recordReply(rec, r, packed) end
        return 'B', { r.t1 }
      end
      -- leaseUntil 0 means released after a retryable error; any other past value, a lapsed holder.
      -- Steps and the last error (extras) stay: the attempt continues where the last one stopped.
      local code = 'T'
      if r.t1 == 0 then code = 'R' end
      r.n, r.a, r.w, r.t1, r.t2, r.t, r.k = r.n + 1, r.a + 1, owner, now + lease, now, trace, name
      saveRecord(rec, r, r.t1 + ttl)
      return code, recordReply(rec, r)
    end
    fence = math.max(now, r.n + 1)
    dropExtras(rec, r)
  else
    -- No record: a compacted one may still answer "already processed".
    local marker = rcall('HGET', bucket, id)
    if marker then
      if struct.unpack('>I6', marker) > now then
        if string.sub(marker, 7) ~= markerFingerprint(fp) then return 'X', marker end
        return 'K', marker
      end
      rcall('HDEL', bucket, id)
    end
  end

  -- The new record, packed directly: the path of every new key.
  local leaseUntil = now + lease
  rcall('SET', rec, struct.pack(IN_PROGRESS_RECORD, 'I', fence, 1, leaseUntil, now, 0, #fp, fp, #trace, trace,
    #owner, owner, #name, name), 'PXAT', intAt(leaseUntil + ttl))
  return 'N', fence
end

local ttl, packed = tonumber(ARGV[1]), ARGV[2]
local out = { now }
local pos, size = 1, #packed
while pos <= size do
  local rec, fp, trace, name, owner, lease
  rec, fp, trace, name, owner, lease, pos = struct.unpack('>I4c0I4c0I4c0I4c0I4c0I6', packed, pos)
  -- rec = <prefix>:{<tag>}:<16-byte id>; the bucket is <prefix>:{<tag>}m.
  local code, payload = beginOne(rec, string.sub(rec, 1, -18) .. 'm', fp, owner, lease, trace, ttl,
    string.sub(rec, -16), now, false, name)
  out[#out + 1] = code
  out[#out + 1] = payload
end
return out
`,
  },
  clear: {
    command: 'eoClear_v2_49a2db0c',
    numberOfKeys: 3,
    sha1: '49a2db0cda8a2fa5520730d154044cb89c722aaa',
    lua: `--[[
clear: forget a key's record (or its compaction marker), so the next message with the key runs
anew: an operator's step before replaying a dead letter whose record is FAILED, or re-running
a COMPLETED one on purpose. A record held under a live lease is left alone.

KEYS[1]  record
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
-- The record: one Redis string (see codec.ts for the same layout in TypeScript). All integers
-- big-endian; strings length-prefixed (4 bytes).
--
--   state 1 byte 'I' | 'C' | 'F', fence 6, attempt 4, t1 6, t2 6, flags 1, fingerprint, trace id
--   IN_PROGRESS then: owner, the store key itself (for listInProgress)
--   COMPLETED then:   result
--
-- t1/t2: IN_PROGRESS leaseUntil (0 = released) / the attempt's start; COMPLETED and FAILED
-- completedAt or failedAt / expiresAt. flags 1: the record has an extras hash, named the record's
-- name + 'x' (same hash tag, so the same cluster slot), expiring with it, holding what the hot
-- path never writes: journaled steps 'S<name>', the error 'e', outgoing messages ('m' count,
-- 'd<i>' id, 'o<i>' message, 'p<i>' once published).
--
-- Records of the previous layout (one hash with one-letter fields) are converted when first
-- touched: loadRecord answers them like any other, in the new layout from then on.
local HEAD = '>c1I6I4I6I6BI4c0I4c0'
-- Whole records of the hot path, packed in one call without a table: an IN_PROGRESS record
-- (HEAD, owner, store key) and a COMPLETED one (HEAD, result).
local IN_PROGRESS_RECORD = HEAD .. 'I4c0I4c0'
local COMPLETED_RECORD = HEAD .. 'I4c0'

local function int(n) return string.format('%d', n) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
end

-- What a compaction marker keeps of a fingerprint (encoded): the first 8 bytes of its sha1.
local function markerFingerprint(encoded)
  local hex = redis.sha1hex(encoded)
  local out = {}
  for i = 1, 16, 2 do out[#out + 1] = string.char(tonumber(string.sub(hex, i, i + 1), 16)) end
  return table.concat(out)
end

local function packRecord(r)
  local head = struct.pack(HEAD, r.s, r.n, r.a, r.t1, r.t2, r.flags, #r.f, r.f, #r.t, r.t)
  if r.s == 'I' then return head .. struct.pack('>I4c0I4c0', #r.w, r.w, #r.k, r.k) end
  if r.s == 'C' then return head .. struct.pack('>I4c0', #r.r, r.r) end
  return head
end

-- \`headOnly\`: without the owner, the store key and the result (a caller that replaces the
-- record whole and answers no record needs none of them).
local function unpackRecord(v, headOnly)
  local s, n, a, t1, t2, flags, f, t, pos = struct.unpack(HEAD, v)
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = struct.unpack('>I4c0I4c0', v, pos)
  elseif s == 'C' then
    r.r = struct.unpack('>I4c0', v, pos)
  end
  return r
end

-- HSET in chunks: unpack() of thousands of values would overflow Lua's C stack.
local function hsetAll(key, fields)
  for i = 1, #fields, 400 do
    rcall('HSET', key, unpack(fields, i, math.min(i + 399, #fields)))
  end
end

local LEGACY_CORE = { s = true, f = true, n = true, a = true, w = true, l = true, k = true, b = true, c = true,
  x = true, t = true, r = true }

-- A record of the previous layout: rewritten in this one, with the same expiry.
local function convertLegacy(rec)
  local all = rcall('HGETALL', rec)
  local h, extras = {}, {}
  for i = 1, #all, 2 do
    if LEGACY_CORE[all[i]] then
      h[all[i]] = all[i + 1]
    else
      extras[#extras + 1] = all[i]
      extras[#extras + 1] = all[i + 1]
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s or 'F', n = tonumber(h.n) or 0, a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
    flags = 0 }
  if r.s == 'I' then
    r.t1, r.t2, r.w, r.k = tonumber(h.l) or 0, tonumber(h.b) or 0, h.w or '', h.k or ''
  else
    r.t1, r.t2, r.r = tonumber(h.c) or 0, tonumber(h.x) or 0, h.r or ''
  end
  if #extras > 0 then
    r.flags = 1
    hsetAll(rec .. 'x', extras)
    if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
  end
  if at > 0 then
    rcall('SET', rec, packRecord(r), 'PXAT', at)
  else
    rcall('SET', rec, packRecord(r))
  end
  return r
end

-- The packed record stored at \`rec\`, or nil; a record of the previous layout is converted first.
local function loadPacked(rec)
  local v = redis.pcall('GET', rec)
  if type(v) == 'table' then
    if v.err and string.find(v.err, 'WRONGTYPE', 1, true) then return packRecord(convertLegacy(rec)) end
    error(v.err)
  end
  if not v then return nil end
  return v
end

-- The record stored at \`rec\`, or nil (see unpackRecord for \`headOnly\`).
local function loadRecord(rec, headOnly)
  local v = loadPacked(rec)
  if not v then return nil end
  return unpackRecord(v, headOnly)
end

-- Writes \`r\` whole, expiring at \`at\` (ms), its extras hash with it.
local function saveRecord(rec, r, at)
  rcall('SET', rec, packRecord(r), 'PXAT', int(at))
  if r.flags == 1 then rcall('PEXPIREAT', rec .. 'x', int(at)) end
end

-- Drops the extras hash (steps, error, messages) of a record about to be replaced.
local function dropExtras(rec, r)
  if r.flags == 1 then
    rcall('DEL', rec .. 'x')
    r.flags = 0
  end
end

-- The extras hash of \`r\`, flagged on the record (same expiry) when it had none.
local function extrasOf(rec, r)
  local ext = rec .. 'x'
  if r.flags ~= 1 then
    r.flags = 1
    rcall('SET', rec, packRecord(r), 'KEEPTTL')
  end
  return ext
end

-- Gives the extras hash the record's expiry (after a write that may have created it).
local function expireExtrasWithRecord(rec)
  local at = rcall('PEXPIRETIME', rec)
  if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
end

-- What a script answers for a stored record: { packed record, extras hash (flat; empty if none) }.
-- \`packed\`: the record as stored, when \`r\` is unchanged (no need to pack it again).
local function recordReply(rec, r, packed)
  local extras = {}
  if r.flags == 1 then extras = rcall('HGETALL', rec .. 'x') end
  return { packed or packRecord(r), extras }
end
local rec, bucket, index = KEYS[1], KEYS[2], KEYS[3]

local r = loadRecord(rec)
if r and r.s == 'I' and r.t1 > now then return -1 end
local live = r and (r.s == 'I' or r.t2 > now)
local removed = rcall('HDEL', bucket, ARGV[1])
rcall('ZREM', index, ARGV[1])
if r then
  dropExtras(rec, r)
  saveRecord(rec, { s = 'F', n = r.n, a = 0, t1 = 0, t2 = 0, flags = 0, f = '', t = '' }, now + tonumber(ARGV[2]))
end
if live or removed > 0 then return 1 end
return 0
`,
  },
  compactCandidates: {
    command: 'eoCompactCandidates_v2_6dcaf1a3',
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
    command: 'eoCompactCompleted_v2_be1138dc',
    numberOfKeys: undefined,
    sha1: 'be1138dc2d517a64d16d008a7f75131306976958',
    lua: `--[[
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
-- The record: one Redis string (see codec.ts for the same layout in TypeScript). All integers
-- big-endian; strings length-prefixed (4 bytes).
--
--   state 1 byte 'I' | 'C' | 'F', fence 6, attempt 4, t1 6, t2 6, flags 1, fingerprint, trace id
--   IN_PROGRESS then: owner, the store key itself (for listInProgress)
--   COMPLETED then:   result
--
-- t1/t2: IN_PROGRESS leaseUntil (0 = released) / the attempt's start; COMPLETED and FAILED
-- completedAt or failedAt / expiresAt. flags 1: the record has an extras hash, named the record's
-- name + 'x' (same hash tag, so the same cluster slot), expiring with it, holding what the hot
-- path never writes: journaled steps 'S<name>', the error 'e', outgoing messages ('m' count,
-- 'd<i>' id, 'o<i>' message, 'p<i>' once published).
--
-- Records of the previous layout (one hash with one-letter fields) are converted when first
-- touched: loadRecord answers them like any other, in the new layout from then on.
local HEAD = '>c1I6I4I6I6BI4c0I4c0'
-- Whole records of the hot path, packed in one call without a table: an IN_PROGRESS record
-- (HEAD, owner, store key) and a COMPLETED one (HEAD, result).
local IN_PROGRESS_RECORD = HEAD .. 'I4c0I4c0'
local COMPLETED_RECORD = HEAD .. 'I4c0'

local function int(n) return string.format('%d', n) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
end

-- What a compaction marker keeps of a fingerprint (encoded): the first 8 bytes of its sha1.
local function markerFingerprint(encoded)
  local hex = redis.sha1hex(encoded)
  local out = {}
  for i = 1, 16, 2 do out[#out + 1] = string.char(tonumber(string.sub(hex, i, i + 1), 16)) end
  return table.concat(out)
end

local function packRecord(r)
  local head = struct.pack(HEAD, r.s, r.n, r.a, r.t1, r.t2, r.flags, #r.f, r.f, #r.t, r.t)
  if r.s == 'I' then return head .. struct.pack('>I4c0I4c0', #r.w, r.w, #r.k, r.k) end
  if r.s == 'C' then return head .. struct.pack('>I4c0', #r.r, r.r) end
  return head
end

-- \`headOnly\`: without the owner, the store key and the result (a caller that replaces the
-- record whole and answers no record needs none of them).
local function unpackRecord(v, headOnly)
  local s, n, a, t1, t2, flags, f, t, pos = struct.unpack(HEAD, v)
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = struct.unpack('>I4c0I4c0', v, pos)
  elseif s == 'C' then
    r.r = struct.unpack('>I4c0', v, pos)
  end
  return r
end

-- HSET in chunks: unpack() of thousands of values would overflow Lua's C stack.
local function hsetAll(key, fields)
  for i = 1, #fields, 400 do
    rcall('HSET', key, unpack(fields, i, math.min(i + 399, #fields)))
  end
end

local LEGACY_CORE = { s = true, f = true, n = true, a = true, w = true, l = true, k = true, b = true, c = true,
  x = true, t = true, r = true }

-- A record of the previous layout: rewritten in this one, with the same expiry.
local function convertLegacy(rec)
  local all = rcall('HGETALL', rec)
  local h, extras = {}, {}
  for i = 1, #all, 2 do
    if LEGACY_CORE[all[i]] then
      h[all[i]] = all[i + 1]
    else
      extras[#extras + 1] = all[i]
      extras[#extras + 1] = all[i + 1]
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s or 'F', n = tonumber(h.n) or 0, a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
    flags = 0 }
  if r.s == 'I' then
    r.t1, r.t2, r.w, r.k = tonumber(h.l) or 0, tonumber(h.b) or 0, h.w or '', h.k or ''
  else
    r.t1, r.t2, r.r = tonumber(h.c) or 0, tonumber(h.x) or 0, h.r or ''
  end
  if #extras > 0 then
    r.flags = 1
    hsetAll(rec .. 'x', extras)
    if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
  end
  if at > 0 then
    rcall('SET', rec, packRecord(r), 'PXAT', at)
  else
    rcall('SET', rec, packRecord(r))
  end
  return r
end

-- The packed record stored at \`rec\`, or nil; a record of the previous layout is converted first.
local function loadPacked(rec)
  local v = redis.pcall('GET', rec)
  if type(v) == 'table' then
    if v.err and string.find(v.err, 'WRONGTYPE', 1, true) then return packRecord(convertLegacy(rec)) end
    error(v.err)
  end
  if not v then return nil end
  return v
end

-- The record stored at \`rec\`, or nil (see unpackRecord for \`headOnly\`).
local function loadRecord(rec, headOnly)
  local v = loadPacked(rec)
  if not v then return nil end
  return unpackRecord(v, headOnly)
end

-- Writes \`r\` whole, expiring at \`at\` (ms), its extras hash with it.
local function saveRecord(rec, r, at)
  rcall('SET', rec, packRecord(r), 'PXAT', int(at))
  if r.flags == 1 then rcall('PEXPIREAT', rec .. 'x', int(at)) end
end

-- Drops the extras hash (steps, error, messages) of a record about to be replaced.
local function dropExtras(rec, r)
  if r.flags == 1 then
    rcall('DEL', rec .. 'x')
    r.flags = 0
  end
end

-- The extras hash of \`r\`, flagged on the record (same expiry) when it had none.
local function extrasOf(rec, r)
  local ext = rec .. 'x'
  if r.flags ~= 1 then
    r.flags = 1
    rcall('SET', rec, packRecord(r), 'KEEPTTL')
  end
  return ext
end

-- Gives the extras hash the record's expiry (after a write that may have created it).
local function expireExtrasWithRecord(rec)
  local at = rcall('PEXPIRETIME', rec)
  if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
end

-- What a script answers for a stored record: { packed record, extras hash (flat; empty if none) }.
-- \`packed\`: the record as stored, when \`r\` is unchanged (no need to pack it again).
local function recordReply(rec, r, packed)
  local extras = {}
  if r.flags == 1 then extras = rcall('HGETALL', rec .. 'x') end
  return { packed or packRecord(r), extras }
end

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
`,
  },
  completeMany: {
    command: 'eoCompleteMany_v2_6cf3c529',
    numberOfKeys: undefined,
    sha1: '6cf3c5296055208555610933bfa6fa79e7d9dff7',
    lua: `#!lua flags=allow-cross-slot-keys
--[[
completeMany: IN_PROGRESS(fence) -> COMPLETED with result and outgoing messages, in one write
per key; several keys in one call, in order (complete is a call with one key). Called with
numkeys = 1. The record answers duplicates until server now + retention and is physically kept
a grace longer, to continue its fence. It replaces the old record whole, which drops the lease,
the journaled steps and the last error; messages go to its extras hash as 'd<i>' = id,
'o<i>' = message, and 'p<i>' once published; 'm' = their count.

KEYS[1]  the first key's record: it routes the call (see beginMany-n.lua, also for a record on
         another node of a Cluster: the keys before it are completed, their answers lost with the
         error; unacked, their messages come back as duplicates)
ARGV[1]  grace (ms) a record is physically kept past its expiry
ARGV[2]  per key, in order: its record's name (length-prefixed: 4-byte length, then the bytes),
         fence (6 bytes), retention in ms (6 bytes), indexed for compaction (1 byte, 1 = yes),
         message count n (4 bytes), then length-prefixed: trace id (encoded; '' = keep the stored
         one), result (encoded; '' = none), and n pairs of message id, message (encoded).
         Numbers big-endian. A key's completion and blob indexes are derived from its record's
         name (see layout.ts).

Returns { r1, r2, ... }: per key 1 (ok) or 0 (lost: not IN_PROGRESS under this fence).
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The record: one Redis string (see codec.ts for the same layout in TypeScript). All integers
-- big-endian; strings length-prefixed (4 bytes).
--
--   state 1 byte 'I' | 'C' | 'F', fence 6, attempt 4, t1 6, t2 6, flags 1, fingerprint, trace id
--   IN_PROGRESS then: owner, the store key itself (for listInProgress)
--   COMPLETED then:   result
--
-- t1/t2: IN_PROGRESS leaseUntil (0 = released) / the attempt's start; COMPLETED and FAILED
-- completedAt or failedAt / expiresAt. flags 1: the record has an extras hash, named the record's
-- name + 'x' (same hash tag, so the same cluster slot), expiring with it, holding what the hot
-- path never writes: journaled steps 'S<name>', the error 'e', outgoing messages ('m' count,
-- 'd<i>' id, 'o<i>' message, 'p<i>' once published).
--
-- Records of the previous layout (one hash with one-letter fields) are converted when first
-- touched: loadRecord answers them like any other, in the new layout from then on.
local HEAD = '>c1I6I4I6I6BI4c0I4c0'
-- Whole records of the hot path, packed in one call without a table: an IN_PROGRESS record
-- (HEAD, owner, store key) and a COMPLETED one (HEAD, result).
local IN_PROGRESS_RECORD = HEAD .. 'I4c0I4c0'
local COMPLETED_RECORD = HEAD .. 'I4c0'

local function int(n) return string.format('%d', n) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
end

-- What a compaction marker keeps of a fingerprint (encoded): the first 8 bytes of its sha1.
local function markerFingerprint(encoded)
  local hex = redis.sha1hex(encoded)
  local out = {}
  for i = 1, 16, 2 do out[#out + 1] = string.char(tonumber(string.sub(hex, i, i + 1), 16)) end
  return table.concat(out)
end

local function packRecord(r)
  local head = struct.pack(HEAD, r.s, r.n, r.a, r.t1, r.t2, r.flags, #r.f, r.f, #r.t, r.t)
  if r.s == 'I' then return head .. struct.pack('>I4c0I4c0', #r.w, r.w, #r.k, r.k) end
  if r.s == 'C' then return head .. struct.pack('>I4c0', #r.r, r.r) end
  return head
end

-- \`headOnly\`: without the owner, the store key and the result (a caller that replaces the
-- record whole and answers no record needs none of them).
local function unpackRecord(v, headOnly)
  local s, n, a, t1, t2, flags, f, t, pos = struct.unpack(HEAD, v)
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = struct.unpack('>I4c0I4c0', v, pos)
  elseif s == 'C' then
    r.r = struct.unpack('>I4c0', v, pos)
  end
  return r
end

-- HSET in chunks: unpack() of thousands of values would overflow Lua's C stack.
local function hsetAll(key, fields)
  for i = 1, #fields, 400 do
    rcall('HSET', key, unpack(fields, i, math.min(i + 399, #fields)))
  end
end

local LEGACY_CORE = { s = true, f = true, n = true, a = true, w = true, l = true, k = true, b = true, c = true,
  x = true, t = true, r = true }

-- A record of the previous layout: rewritten in this one, with the same expiry.
local function convertLegacy(rec)
  local all = rcall('HGETALL', rec)
  local h, extras = {}, {}
  for i = 1, #all, 2 do
    if LEGACY_CORE[all[i]] then
      h[all[i]] = all[i + 1]
    else
      extras[#extras + 1] = all[i]
      extras[#extras + 1] = all[i + 1]
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s or 'F', n = tonumber(h.n) or 0, a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
    flags = 0 }
  if r.s == 'I' then
    r.t1, r.t2, r.w, r.k = tonumber(h.l) or 0, tonumber(h.b) or 0, h.w or '', h.k or ''
  else
    r.t1, r.t2, r.r = tonumber(h.c) or 0, tonumber(h.x) or 0, h.r or ''
  end
  if #extras > 0 then
    r.flags = 1
    hsetAll(rec .. 'x', extras)
    if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
  end
  if at > 0 then
    rcall('SET', rec, packRecord(r), 'PXAT', at)
  else
    rcall('SET', rec, packRecord(r))
  end
  return r
end

-- The packed record stored at \`rec\`, or nil; a record of the previous layout is converted first.
local function loadPacked(rec)
  local v = redis.pcall('GET', rec)
  if type(v) == 'table' then
    if v.err and string.find(v.err, 'WRONGTYPE', 1, true) then return packRecord(convertLegacy(rec)) end
    error(v.err)
  end
  if not v then return nil end
  return v
end

-- The record stored at \`rec\`, or nil (see unpackRecord for \`headOnly\`).
local function loadRecord(rec, headOnly)
  local v = loadPacked(rec)
  if not v then return nil end
  return unpackRecord(v, headOnly)
end

-- Writes \`r\` whole, expiring at \`at\` (ms), its extras hash with it.
local function saveRecord(rec, r, at)
  rcall('SET', rec, packRecord(r), 'PXAT', int(at))
  if r.flags == 1 then rcall('PEXPIREAT', rec .. 'x', int(at)) end
end

-- Drops the extras hash (steps, error, messages) of a record about to be replaced.
local function dropExtras(rec, r)
  if r.flags == 1 then
    rcall('DEL', rec .. 'x')
    r.flags = 0
  end
end

-- The extras hash of \`r\`, flagged on the record (same expiry) when it had none.
local function extrasOf(rec, r)
  local ext = rec .. 'x'
  if r.flags ~= 1 then
    r.flags = 1
    rcall('SET', rec, packRecord(r), 'KEEPTTL')
  end
  return ext
end

-- Gives the extras hash the record's expiry (after a write that may have created it).
local function expireExtrasWithRecord(rec)
  local at = rcall('PEXPIRETIME', rec)
  if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
end

-- What a script answers for a stored record: { packed record, extras hash (flat; empty if none) }.
-- \`packed\`: the record as stored, when \`r\` is unchanged (no need to pack it again).
local function recordReply(rec, r, packed)
  local extras = {}
  if r.flags == 1 then extras = rcall('HGETALL', rec .. 'x') end
  return { packed or packRecord(r), extras }
end
-- completeOne: IN_PROGRESS(fence) -> COMPLETED of one key (see completeMany-n.lua). \`messages\` holds
-- its outgoing messages as id, message, id, message, ...; \`fence\` is a number.
-- Returns 1 (ok) or 0 (lost).
-- \`tag\` is the record's name without its id (\`<prefix>:{<tag>}\`): the tag's completion index is
-- tag .. 'i', its blob index tag .. 'b'.
-- A blob result's pointer goes into the blob index (member = packed pointer, score = the record's
-- physical end), so collectBlobs can delete the blob once no record names it.
local function completeOne(rec, tag, fence, retention, grace, trace, result, id, messages, now)
  local packed = loadPacked(rec)
  if not packed then return 0 end
  -- The head as locals, not a record table: this runs for every message.
  local s, n, a, _, _, flags, f, t = struct.unpack(HEAD, packed)
  if s ~= 'I' or n ~= fence then return 0 end
  local expiresAt = now + retention
  local physicalEnd = expiresAt + grace
  if trace == '' then trace = t end

  -- The new record replaces the old whole, which drops the lease, the journaled steps and the
  -- last error.
  if flags == 1 then
    rcall('DEL', rec .. 'x')
    flags = 0
  end
  local count = #messages / 2
  if count > 0 then
    flags = 1
    local fields = { 'm', int(count) }
    for i = 1, count do
      fields[#fields + 1] = 'd' .. i
      fields[#fields + 1] = messages[2 * i - 1]
      fields[#fields + 1] = 'o' .. i
      fields[#fields + 1] = messages[2 * i]
    end
    hsetAll(rec .. 'x', fields)
  end
  local at = intAt(physicalEnd)
  rcall('SET', rec, struct.pack(COMPLETED_RECORD, 'C', n, a, now, expiresAt, flags, #f, f, #trace, trace, #result,
    result), 'PXAT', at)
  if flags == 1 then rcall('PEXPIREAT', rec .. 'x', at) end

  if string.sub(result, 1, 1) == 'b' then rcall('ZADD', tag .. 'b', 'GT', at, result) end

  if id ~= '' then
    local index = tag .. 'i'
    rcall('ZADD', index, int(now), id)
    -- The index lives as long as its newest record; compaction prunes it meanwhile.
    local ttl = rcall('PTTL', index)
    if ttl < 0 or now + ttl < physicalEnd then rcall('PEXPIREAT', index, int(physicalEnd)) end
  end
  return 1
end

local grace, packed = tonumber(ARGV[1]), ARGV[2]
local out = {}
local pos, size = 1, #packed
while pos <= size do
  local rec, fence, retention, indexed, count, trace, result
  rec, fence, retention, indexed, count, trace, result, pos = struct.unpack('>I4c0I6I6BI4I4c0I4c0', packed, pos)
  local messages = {}
  for j = 1, 2 * count do
    messages[j], pos = struct.unpack('>I4c0', packed, pos)
  end
  local id = ''
  if indexed == 1 then id = string.sub(rec, -16) end
  -- rec = <prefix>:{<tag>}:<16-byte id>
  out[#out + 1] = completeOne(rec, string.sub(rec, 1, -18), fence, retention, grace, trace, result, id, messages,
    now)
end
return out
`,
  },
  extend: {
    command: 'eoExtend_v2_560bca72',
    numberOfKeys: 1,
    sha1: '560bca7241d2a4a62cdd036dcfab5be5fd2d84ca',
    lua: `--[[
extend: push the lease of the holding fence out to server now + lease.

KEYS[1]  record
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
-- The record: one Redis string (see codec.ts for the same layout in TypeScript). All integers
-- big-endian; strings length-prefixed (4 bytes).
--
--   state 1 byte 'I' | 'C' | 'F', fence 6, attempt 4, t1 6, t2 6, flags 1, fingerprint, trace id
--   IN_PROGRESS then: owner, the store key itself (for listInProgress)
--   COMPLETED then:   result
--
-- t1/t2: IN_PROGRESS leaseUntil (0 = released) / the attempt's start; COMPLETED and FAILED
-- completedAt or failedAt / expiresAt. flags 1: the record has an extras hash, named the record's
-- name + 'x' (same hash tag, so the same cluster slot), expiring with it, holding what the hot
-- path never writes: journaled steps 'S<name>', the error 'e', outgoing messages ('m' count,
-- 'd<i>' id, 'o<i>' message, 'p<i>' once published).
--
-- Records of the previous layout (one hash with one-letter fields) are converted when first
-- touched: loadRecord answers them like any other, in the new layout from then on.
local HEAD = '>c1I6I4I6I6BI4c0I4c0'
-- Whole records of the hot path, packed in one call without a table: an IN_PROGRESS record
-- (HEAD, owner, store key) and a COMPLETED one (HEAD, result).
local IN_PROGRESS_RECORD = HEAD .. 'I4c0I4c0'
local COMPLETED_RECORD = HEAD .. 'I4c0'

local function int(n) return string.format('%d', n) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
end

-- What a compaction marker keeps of a fingerprint (encoded): the first 8 bytes of its sha1.
local function markerFingerprint(encoded)
  local hex = redis.sha1hex(encoded)
  local out = {}
  for i = 1, 16, 2 do out[#out + 1] = string.char(tonumber(string.sub(hex, i, i + 1), 16)) end
  return table.concat(out)
end

local function packRecord(r)
  local head = struct.pack(HEAD, r.s, r.n, r.a, r.t1, r.t2, r.flags, #r.f, r.f, #r.t, r.t)
  if r.s == 'I' then return head .. struct.pack('>I4c0I4c0', #r.w, r.w, #r.k, r.k) end
  if r.s == 'C' then return head .. struct.pack('>I4c0', #r.r, r.r) end
  return head
end

-- \`headOnly\`: without the owner, the store key and the result (a caller that replaces the
-- record whole and answers no record needs none of them).
local function unpackRecord(v, headOnly)
  local s, n, a, t1, t2, flags, f, t, pos = struct.unpack(HEAD, v)
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = struct.unpack('>I4c0I4c0', v, pos)
  elseif s == 'C' then
    r.r = struct.unpack('>I4c0', v, pos)
  end
  return r
end

-- HSET in chunks: unpack() of thousands of values would overflow Lua's C stack.
local function hsetAll(key, fields)
  for i = 1, #fields, 400 do
    rcall('HSET', key, unpack(fields, i, math.min(i + 399, #fields)))
  end
end

local LEGACY_CORE = { s = true, f = true, n = true, a = true, w = true, l = true, k = true, b = true, c = true,
  x = true, t = true, r = true }

-- A record of the previous layout: rewritten in this one, with the same expiry.
local function convertLegacy(rec)
  local all = rcall('HGETALL', rec)
  local h, extras = {}, {}
  for i = 1, #all, 2 do
    if LEGACY_CORE[all[i]] then
      h[all[i]] = all[i + 1]
    else
      extras[#extras + 1] = all[i]
      extras[#extras + 1] = all[i + 1]
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s or 'F', n = tonumber(h.n) or 0, a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
    flags = 0 }
  if r.s == 'I' then
    r.t1, r.t2, r.w, r.k = tonumber(h.l) or 0, tonumber(h.b) or 0, h.w or '', h.k or ''
  else
    r.t1, r.t2, r.r = tonumber(h.c) or 0, tonumber(h.x) or 0, h.r or ''
  end
  if #extras > 0 then
    r.flags = 1
    hsetAll(rec .. 'x', extras)
    if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
  end
  if at > 0 then
    rcall('SET', rec, packRecord(r), 'PXAT', at)
  else
    rcall('SET', rec, packRecord(r))
  end
  return r
end

-- The packed record stored at \`rec\`, or nil; a record of the previous layout is converted first.
local function loadPacked(rec)
  local v = redis.pcall('GET', rec)
  if type(v) == 'table' then
    if v.err and string.find(v.err, 'WRONGTYPE', 1, true) then return packRecord(convertLegacy(rec)) end
    error(v.err)
  end
  if not v then return nil end
  return v
end

-- The record stored at \`rec\`, or nil (see unpackRecord for \`headOnly\`).
local function loadRecord(rec, headOnly)
  local v = loadPacked(rec)
  if not v then return nil end
  return unpackRecord(v, headOnly)
end

-- Writes \`r\` whole, expiring at \`at\` (ms), its extras hash with it.
local function saveRecord(rec, r, at)
  rcall('SET', rec, packRecord(r), 'PXAT', int(at))
  if r.flags == 1 then rcall('PEXPIREAT', rec .. 'x', int(at)) end
end

-- Drops the extras hash (steps, error, messages) of a record about to be replaced.
local function dropExtras(rec, r)
  if r.flags == 1 then
    rcall('DEL', rec .. 'x')
    r.flags = 0
  end
end

-- The extras hash of \`r\`, flagged on the record (same expiry) when it had none.
local function extrasOf(rec, r)
  local ext = rec .. 'x'
  if r.flags ~= 1 then
    r.flags = 1
    rcall('SET', rec, packRecord(r), 'KEEPTTL')
  end
  return ext
end

-- Gives the extras hash the record's expiry (after a write that may have created it).
local function expireExtrasWithRecord(rec)
  local at = rcall('PEXPIRETIME', rec)
  if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
end

-- What a script answers for a stored record: { packed record, extras hash (flat; empty if none) }.
-- \`packed\`: the record as stored, when \`r\` is unchanged (no need to pack it again).
local function recordReply(rec, r, packed)
  local extras = {}
  if r.flags == 1 then extras = rcall('HGETALL', rec .. 'x') end
  return { packed or packRecord(r), extras }
end
local rec = KEYS[1]

local r = loadRecord(rec)
if not r or r.s ~= 'I' or r.n ~= tonumber(ARGV[1]) then return 0 end
r.t1 = now + tonumber(ARGV[2])
saveRecord(rec, r, r.t1 + tonumber(ARGV[3]))
return 1
`,
  },
  fail: {
    command: 'eoFail_v2_cf4ab175',
    numberOfKeys: 1,
    sha1: 'cf4ab175a1fd32a4d672e078ace5dfe397fba840',
    lua: `--[[
fail: IN_PROGRESS(fence) -> FAILED, kept for the retention.

KEYS[1]  record
ARGV[1]  fence
ARGV[2]  error (encoded)
ARGV[3]  retention (ms)
ARGV[4]  grace (ms) the record is physically kept past its expiry, to continue its fence

The new record replaces the old whole, which drops the journaled steps; the error goes to its
extras hash ('e').

Returns:
  1  ok
  0  lost: the record is not IN_PROGRESS under this fence
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The record: one Redis string (see codec.ts for the same layout in TypeScript). All integers
-- big-endian; strings length-prefixed (4 bytes).
--
--   state 1 byte 'I' | 'C' | 'F', fence 6, attempt 4, t1 6, t2 6, flags 1, fingerprint, trace id
--   IN_PROGRESS then: owner, the store key itself (for listInProgress)
--   COMPLETED then:   result
--
-- t1/t2: IN_PROGRESS leaseUntil (0 = released) / the attempt's start; COMPLETED and FAILED
-- completedAt or failedAt / expiresAt. flags 1: the record has an extras hash, named the record's
-- name + 'x' (same hash tag, so the same cluster slot), expiring with it, holding what the hot
-- path never writes: journaled steps 'S<name>', the error 'e', outgoing messages ('m' count,
-- 'd<i>' id, 'o<i>' message, 'p<i>' once published).
--
-- Records of the previous layout (one hash with one-letter fields) are converted when first
-- touched: loadRecord answers them like any other, in the new layout from then on.
local HEAD = '>c1I6I4I6I6BI4c0I4c0'
-- Whole records of the hot path, packed in one call without a table: an IN_PROGRESS record
-- (HEAD, owner, store key) and a COMPLETED one (HEAD, result).
local IN_PROGRESS_RECORD = HEAD .. 'I4c0I4c0'
local COMPLETED_RECORD = HEAD .. 'I4c0'

local function int(n) return string.format('%d', n) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
end

-- What a compaction marker keeps of a fingerprint (encoded): the first 8 bytes of its sha1.
local function markerFingerprint(encoded)
  local hex = redis.sha1hex(encoded)
  local out = {}
  for i = 1, 16, 2 do out[#out + 1] = string.char(tonumber(string.sub(hex, i, i + 1), 16)) end
  return table.concat(out)
end

local function packRecord(r)
  local head = struct.pack(HEAD, r.s, r.n, r.a, r.t1, r.t2, r.flags, #r.f, r.f, #r.t, r.t)
  if r.s == 'I' then return head .. struct.pack('>I4c0I4c0', #r.w, r.w, #r.k, r.k) end
  if r.s == 'C' then return head .. struct.pack('>I4c0', #r.r, r.r) end
  return head
end

-- \`headOnly\`: without the owner, the store key and the result (a caller that replaces the
-- record whole and answers no record needs none of them).
local function unpackRecord(v, headOnly)
  local s, n, a, t1, t2, flags, f, t, pos = struct.unpack(HEAD, v)
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = struct.unpack('>I4c0I4c0', v, pos)
  elseif s == 'C' then
    r.r = struct.unpack('>I4c0', v, pos)
  end
  return r
end

-- HSET in chunks: unpack() of thousands of values would overflow Lua's C stack.
local function hsetAll(key, fields)
  for i = 1, #fields, 400 do
    rcall('HSET', key, unpack(fields, i, math.min(i + 399, #fields)))
  end
end

local LEGACY_CORE = { s = true, f = true, n = true, a = true, w = true, l = true, k = true, b = true, c = true,
  x = true, t = true, r = true }

-- A record of the previous layout: rewritten in this one, with the same expiry.
local function convertLegacy(rec)
  local all = rcall('HGETALL', rec)
  local h, extras = {}, {}
  for i = 1, #all, 2 do
    if LEGACY_CORE[all[i]] then
      h[all[i]] = all[i + 1]
    else
      extras[#extras + 1] = all[i]
      extras[#extras + 1] = all[i + 1]
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s or 'F', n = tonumber(h.n) or 0, a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
    flags = 0 }
  if r.s == 'I' then
    r.t1, r.t2, r.w, r.k = tonumber(h.l) or 0, tonumber(h.b) or 0, h.w or '', h.k or ''
  else
    r.t1, r.t2, r.r = tonumber(h.c) or 0, tonumber(h.x) or 0, h.r or ''
  end
  if #extras > 0 then
    r.flags = 1
    hsetAll(rec .. 'x', extras)
    if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
  end
  if at > 0 then
    rcall('SET', rec, packRecord(r), 'PXAT', at)
  else
    rcall('SET', rec, packRecord(r))
  end
  return r
end

-- The packed record stored at \`rec\`, or nil; a record of the previous layout is converted first.
local function loadPacked(rec)
  local v = redis.pcall('GET', rec)
  if type(v) == 'table' then
    if v.err and string.find(v.err, 'WRONGTYPE', 1, true) then return packRecord(convertLegacy(rec)) end
    error(v.err)
  end
  if not v then return nil end
  return v
end

-- The record stored at \`rec\`, or nil (see unpackRecord for \`headOnly\`).
local function loadRecord(rec, headOnly)
  local v = loadPacked(rec)
  if not v then return nil end
  return unpackRecord(v, headOnly)
end

-- Writes \`r\` whole, expiring at \`at\` (ms), its extras hash with it.
local function saveRecord(rec, r, at)
  rcall('SET', rec, packRecord(r), 'PXAT', int(at))
  if r.flags == 1 then rcall('PEXPIREAT', rec .. 'x', int(at)) end
end

-- Drops the extras hash (steps, error, messages) of a record about to be replaced.
local function dropExtras(rec, r)
  if r.flags == 1 then
    rcall('DEL', rec .. 'x')
    r.flags = 0
  end
end

-- The extras hash of \`r\`, flagged on the record (same expiry) when it had none.
local function extrasOf(rec, r)
  local ext = rec .. 'x'
  if r.flags ~= 1 then
    r.flags = 1
    rcall('SET', rec, packRecord(r), 'KEEPTTL')
  end
  return ext
end

-- Gives the extras hash the record's expiry (after a write that may have created it).
local function expireExtrasWithRecord(rec)
  local at = rcall('PEXPIRETIME', rec)
  if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
end

-- What a script answers for a stored record: { packed record, extras hash (flat; empty if none) }.
-- \`packed\`: the record as stored, when \`r\` is unchanged (no need to pack it again).
local function recordReply(rec, r, packed)
  local extras = {}
  if r.flags == 1 then extras = rcall('HGETALL', rec .. 'x') end
  return { packed or packRecord(r), extras }
end
local rec = KEYS[1]

local r = loadRecord(rec)
if not r or r.s ~= 'I' or r.n ~= tonumber(ARGV[1]) then return 0 end
local expiresAt = now + tonumber(ARGV[3])
dropExtras(rec, r)
rcall('HSET', rec .. 'x', 'e', ARGV[2])
saveRecord(rec, { s = 'F', n = r.n, a = r.a, t1 = now, t2 = expiresAt, flags = 1, f = r.f, t = r.t },
  expiresAt + tonumber(ARGV[4]))
return 1
`,
  },
  get: {
    command: 'eoGet_v2_243d0009',
    numberOfKeys: 2,
    sha1: '243d0009786f8cd783855430aaaef4b163bc1a8f',
    lua: `--[[
get: read a record, or the compaction marker standing in for it, with the server clock.

KEYS[1]  record
KEYS[2]  compaction-marker bucket of the key's hash tag
ARGV[1]  record id (16 bytes): the key's field in the marker bucket

Returns { server now (ms), record ({ packed, extras }; nil when absent), marker value or nil }.
The marker is read only when the record is absent. Expiry is judged by the caller against
the returned server time.
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The record: one Redis string (see codec.ts for the same layout in TypeScript). All integers
-- big-endian; strings length-prefixed (4 bytes).
--
--   state 1 byte 'I' | 'C' | 'F', fence 6, attempt 4, t1 6, t2 6, flags 1, fingerprint, trace id
--   IN_PROGRESS then: owner, the store key itself (for listInProgress)
--   COMPLETED then:   result
--
-- t1/t2: IN_PROGRESS leaseUntil (0 = released) / the attempt's start; COMPLETED and FAILED
-- completedAt or failedAt / expiresAt. flags 1: the record has an extras hash, named the record's
-- name + 'x' (same hash tag, so the same cluster slot), expiring with it, holding what the hot
-- path never writes: journaled steps 'S<name>', the error 'e', outgoing messages ('m' count,
-- 'd<i>' id, 'o<i>' message, 'p<i>' once published).
--
-- Records of the previous layout (one hash with one-letter fields) are converted when first
-- touched: loadRecord answers them like any other, in the new layout from then on.
local HEAD = '>c1I6I4I6I6BI4c0I4c0'
-- Whole records of the hot path, packed in one call without a table: an IN_PROGRESS record
-- (HEAD, owner, store key) and a COMPLETED one (HEAD, result).
local IN_PROGRESS_RECORD = HEAD .. 'I4c0I4c0'
local COMPLETED_RECORD = HEAD .. 'I4c0'

local function int(n) return string.format('%d', n) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
end

-- What a compaction marker keeps of a fingerprint (encoded): the first 8 bytes of its sha1.
local function markerFingerprint(encoded)
  local hex = redis.sha1hex(encoded)
  local out = {}
  for i = 1, 16, 2 do out[#out + 1] = string.char(tonumber(string.sub(hex, i, i + 1), 16)) end
  return table.concat(out)
end

local function packRecord(r)
  local head = struct.pack(HEAD, r.s, r.n, r.a, r.t1, r.t2, r.flags, #r.f, r.f, #r.t, r.t)
  if r.s == 'I' then return head .. struct.pack('>I4c0I4c0', #r.w, r.w, #r.k, r.k) end
  if r.s == 'C' then return head .. struct.pack('>I4c0', #r.r, r.r) end
  return head
end

-- \`headOnly\`: without the owner, the store key and the result (a caller that replaces the
-- record whole and answers no record needs none of them).
local function unpackRecord(v, headOnly)
  local s, n, a, t1, t2, flags, f, t, pos = struct.unpack(HEAD, v)
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = struct.unpack('>I4c0I4c0', v, pos)
  elseif s == 'C' then
    r.r = struct.unpack('>I4c0', v, pos)
  end
  return r
end

-- HSET in chunks: unpack() of thousands of values would overflow Lua's C stack.
local function hsetAll(key, fields)
  for i = 1, #fields, 400 do
    rcall('HSET', key, unpack(fields, i, math.min(i + 399, #fields)))
  end
end

local LEGACY_CORE = { s = true, f = true, n = true, a = true, w = true, l = true, k = true, b = true, c = true,
  x = true, t = true, r = true }

-- A record of the previous layout: rewritten in this one, with the same expiry.
local function convertLegacy(rec)
  local all = rcall('HGETALL', rec)
  local h, extras = {}, {}
  for i = 1, #all, 2 do
    if LEGACY_CORE[all[i]] then
      h[all[i]] = all[i + 1]
    else
      extras[#extras + 1] = all[i]
      extras[#extras + 1] = all[i + 1]
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s or 'F', n = tonumber(h.n) or 0, a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
    flags = 0 }
  if r.s == 'I' then
    r.t1, r.t2, r.w, r.k = tonumber(h.l) or 0, tonumber(h.b) or 0, h.w or '', h.k or ''
  else
    r.t1, r.t2, r.r = tonumber(h.c) or 0, tonumber(h.x) or 0, h.r or ''
  end
  if #extras > 0 then
    r.flags = 1
    hsetAll(rec .. 'x', extras)
    if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
  end
  if at > 0 then
    rcall('SET', rec, packRecord(r), 'PXAT', at)
  else
    rcall('SET', rec, packRecord(r))
  end
  return r
end

-- The packed record stored at \`rec\`, or nil; a record of the previous layout is converted first.
local function loadPacked(rec)
  local v = redis.pcall('GET', rec)
  if type(v) == 'table' then
    if v.err and string.find(v.err, 'WRONGTYPE', 1, true) then return packRecord(convertLegacy(rec)) end
    error(v.err)
  end
  if not v then return nil end
  return v
end

-- The record stored at \`rec\`, or nil (see unpackRecord for \`headOnly\`).
local function loadRecord(rec, headOnly)
  local v = loadPacked(rec)
  if not v then return nil end
  return unpackRecord(v, headOnly)
end

-- Writes \`r\` whole, expiring at \`at\` (ms), its extras hash with it.
local function saveRecord(rec, r, at)
  rcall('SET', rec, packRecord(r), 'PXAT', int(at))
  if r.flags == 1 then rcall('PEXPIREAT', rec .. 'x', int(at)) end
end

-- Drops the extras hash (steps, error, messages) of a record about to be replaced.
local function dropExtras(rec, r)
  if r.flags == 1 then
    rcall('DEL', rec .. 'x')
    r.flags = 0
  end
end

-- The extras hash of \`r\`, flagged on the record (same expiry) when it had none.
local function extrasOf(rec, r)
  local ext = rec .. 'x'
  if r.flags ~= 1 then
    r.flags = 1
    rcall('SET', rec, packRecord(r), 'KEEPTTL')
  end
  return ext
end

-- Gives the extras hash the record's expiry (after a write that may have created it).
local function expireExtrasWithRecord(rec)
  local at = rcall('PEXPIRETIME', rec)
  if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
end

-- What a script answers for a stored record: { packed record, extras hash (flat; empty if none) }.
-- \`packed\`: the record as stored, when \`r\` is unchanged (no need to pack it again).
local function recordReply(rec, r, packed)
  local extras = {}
  if r.flags == 1 then extras = rcall('HGETALL', rec .. 'x') end
  return { packed or packRecord(r), extras }
end

local r = loadRecord(KEYS[1])
if r then return { now, recordReply(KEYS[1], r), false } end
return { now, false, rcall('HGET', KEYS[2], ARGV[1]) }
`,
  },
  markPublished: {
    command: 'eoMarkPublished_v2_35623d73',
    numberOfKeys: 1,
    sha1: '35623d73be1ef387e3b6c9701c3c0fcfb65973c1',
    lua: `--[[
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
-- The record: one Redis string (see codec.ts for the same layout in TypeScript). All integers
-- big-endian; strings length-prefixed (4 bytes).
--
--   state 1 byte 'I' | 'C' | 'F', fence 6, attempt 4, t1 6, t2 6, flags 1, fingerprint, trace id
--   IN_PROGRESS then: owner, the store key itself (for listInProgress)
--   COMPLETED then:   result
--
-- t1/t2: IN_PROGRESS leaseUntil (0 = released) / the attempt's start; COMPLETED and FAILED
-- completedAt or failedAt / expiresAt. flags 1: the record has an extras hash, named the record's
-- name + 'x' (same hash tag, so the same cluster slot), expiring with it, holding what the hot
-- path never writes: journaled steps 'S<name>', the error 'e', outgoing messages ('m' count,
-- 'd<i>' id, 'o<i>' message, 'p<i>' once published).
--
-- Records of the previous layout (one hash with one-letter fields) are converted when first
-- touched: loadRecord answers them like any other, in the new layout from then on.
local HEAD = '>c1I6I4I6I6BI4c0I4c0'
-- Whole records of the hot path, packed in one call without a table: an IN_PROGRESS record
-- (HEAD, owner, store key) and a COMPLETED one (HEAD, result).
local IN_PROGRESS_RECORD = HEAD .. 'I4c0I4c0'
local COMPLETED_RECORD = HEAD .. 'I4c0'

local function int(n) return string.format('%d', n) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
end

-- What a compaction marker keeps of a fingerprint (encoded): the first 8 bytes of its sha1.
local function markerFingerprint(encoded)
  local hex = redis.sha1hex(encoded)
  local out = {}
  for i = 1, 16, 2 do out[#out + 1] = string.char(tonumber(string.sub(hex, i, i + 1), 16)) end
  return table.concat(out)
end

local function packRecord(r)
  local head = struct.pack(HEAD, r.s, r.n, r.a, r.t1, r.t2, r.flags, #r.f, r.f, #r.t, r.t)
  if r.s == 'I' then return head .. struct.pack('>I4c0I4c0', #r.w, r.w, #r.k, r.k) end
  if r.s == 'C' then return head .. struct.pack('>I4c0', #r.r, r.r) end
  return head
end

-- \`headOnly\`: without the owner, the store key and the result (a caller that replaces the
-- record whole and answers no record needs none of them).
local function unpackRecord(v, headOnly)
  local s, n, a, t1, t2, flags, f, t, pos = struct.unpack(HEAD, v)
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = struct.unpack('>I4c0I4c0', v, pos)
  elseif s == 'C' then
    r.r = struct.unpack('>I4c0', v, pos)
  end
  return r
end

-- HSET in chunks: unpack() of thousands of values would overflow Lua's C stack.
local function hsetAll(key, fields)
  for i = 1, #fields, 400 do
    rcall('HSET', key, unpack(fields, i, math.min(i + 399, #fields)))
  end
end

local LEGACY_CORE = { s = true, f = true, n = true, a = true, w = true, l = true, k = true, b = true, c = true,
  x = true, t = true, r = true }

-- A record of the previous layout: rewritten in this one, with the same expiry.
local function convertLegacy(rec)
  local all = rcall('HGETALL', rec)
  local h, extras = {}, {}
  for i = 1, #all, 2 do
    if LEGACY_CORE[all[i]] then
      h[all[i]] = all[i + 1]
    else
      extras[#extras + 1] = all[i]
      extras[#extras + 1] = all[i + 1]
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s or 'F', n = tonumber(h.n) or 0, a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
    flags = 0 }
  if r.s == 'I' then
    r.t1, r.t2, r.w, r.k = tonumber(h.l) or 0, tonumber(h.b) or 0, h.w or '', h.k or ''
  else
    r.t1, r.t2, r.r = tonumber(h.c) or 0, tonumber(h.x) or 0, h.r or ''
  end
  if #extras > 0 then
    r.flags = 1
    hsetAll(rec .. 'x', extras)
    if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
  end
  if at > 0 then
    rcall('SET', rec, packRecord(r), 'PXAT', at)
  else
    rcall('SET', rec, packRecord(r))
  end
  return r
end

-- The packed record stored at \`rec\`, or nil; a record of the previous layout is converted first.
local function loadPacked(rec)
  local v = redis.pcall('GET', rec)
  if type(v) == 'table' then
    if v.err and string.find(v.err, 'WRONGTYPE', 1, true) then return packRecord(convertLegacy(rec)) end
    error(v.err)
  end
  if not v then return nil end
  return v
end

-- The record stored at \`rec\`, or nil (see unpackRecord for \`headOnly\`).
local function loadRecord(rec, headOnly)
  local v = loadPacked(rec)
  if not v then return nil end
  return unpackRecord(v, headOnly)
end

-- Writes \`r\` whole, expiring at \`at\` (ms), its extras hash with it.
local function saveRecord(rec, r, at)
  rcall('SET', rec, packRecord(r), 'PXAT', int(at))
  if r.flags == 1 then rcall('PEXPIREAT', rec .. 'x', int(at)) end
end

-- Drops the extras hash (steps, error, messages) of a record about to be replaced.
local function dropExtras(rec, r)
  if r.flags == 1 then
    rcall('DEL', rec .. 'x')
    r.flags = 0
  end
end

-- The extras hash of \`r\`, flagged on the record (same expiry) when it had none.
local function extrasOf(rec, r)
  local ext = rec .. 'x'
  if r.flags ~= 1 then
    r.flags = 1
    rcall('SET', rec, packRecord(r), 'KEEPTTL')
  end
  return ext
end

-- Gives the extras hash the record's expiry (after a write that may have created it).
local function expireExtrasWithRecord(rec)
  local at = rcall('PEXPIRETIME', rec)
  if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
end

-- What a script answers for a stored record: { packed record, extras hash (flat; empty if none) }.
-- \`packed\`: the record as stored, when \`r\` is unchanged (no need to pack it again).
local function recordReply(rec, r, packed)
  local extras = {}
  if r.flags == 1 then extras = rcall('HGETALL', rec .. 'x') end
  return { packed or packRecord(r), extras }
end
-- markPublishedOne: flags the messages of a live COMPLETED record, completed under \`fence\`, whose
-- ids are keys of \`wanted\` as published. Returns how many were newly flagged.
local function markPublishedOne(rec, fence, wanted, now)
  local r = loadRecord(rec)
  if not r or r.s ~= 'C' or r.t2 <= now or r.n ~= tonumber(fence) or r.flags ~= 1 then return 0 end
  local ext = rec .. 'x'
  local flagged = 0
  for i = 1, tonumber(rcall('HGET', ext, 'm')) or 0 do
    if wanted[rcall('HGET', ext, 'd' .. i)] then flagged = flagged + rcall('HSET', ext, 'p' .. i, '1') end
  end
  return flagged
end

if #ARGV < 2 then return 0 end
local wanted = {}
for i = 2, #ARGV do wanted[ARGV[i]] = true end
return markPublishedOne(KEYS[1], ARGV[1], wanted, now)
`,
  },
  markPublishedMany: {
    command: 'eoMarkPublishedMany_v2_3ca54735',
    numberOfKeys: undefined,
    sha1: '3ca54735c2f56040850a972940ed601d33d34272',
    lua: `#!lua flags=allow-cross-slot-keys
--[[
markPublishedMany: markPublished-1.lua for several records in one call. Called with numkeys = 1.

KEYS[1]  the first record: it routes the call (see beginMany-n.lua)
ARGV[1]  per record, in order: its name and fence it was completed under as length-prefixed
         strings (4-byte big-endian length, then the bytes), id count n (4 bytes), then n
         length-prefixed message ids

Returns the number of messages newly flagged in all.
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The record: one Redis string (see codec.ts for the same layout in TypeScript). All integers
-- big-endian; strings length-prefixed (4 bytes).
--
--   state 1 byte 'I' | 'C' | 'F', fence 6, attempt 4, t1 6, t2 6, flags 1, fingerprint, trace id
--   IN_PROGRESS then: owner, the store key itself (for listInProgress)
--   COMPLETED then:   result
--
-- t1/t2: IN_PROGRESS leaseUntil (0 = released) / the attempt's start; COMPLETED and FAILED
-- completedAt or failedAt / expiresAt. flags 1: the record has an extras hash, named the record's
-- name + 'x' (same hash tag, so the same cluster slot), expiring with it, holding what the hot
-- path never writes: journaled steps 'S<name>', the error 'e', outgoing messages ('m' count,
-- 'd<i>' id, 'o<i>' message, 'p<i>' once published).
--
-- Records of the previous layout (one hash with one-letter fields) are converted when first
-- touched: loadRecord answers them like any other, in the new layout from then on.
local HEAD = '>c1I6I4I6I6BI4c0I4c0'
-- Whole records of the hot path, packed in one call without a table: an IN_PROGRESS record
-- (HEAD, owner, store key) and a COMPLETED one (HEAD, result).
local IN_PROGRESS_RECORD = HEAD .. 'I4c0I4c0'
local COMPLETED_RECORD = HEAD .. 'I4c0'

local function int(n) return string.format('%d', n) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
end

-- What a compaction marker keeps of a fingerprint (encoded): the first 8 bytes of its sha1.
local function markerFingerprint(encoded)
  local hex = redis.sha1hex(encoded)
  local out = {}
  for i = 1, 16, 2 do out[#out + 1] = string.char(tonumber(string.sub(hex, i, i + 1), 16)) end
  return table.concat(out)
end

local function packRecord(r)
  local head = struct.pack(HEAD, r.s, r.n, r.a, r.t1, r.t2, r.flags, #r.f, r.f, #r.t, r.t)
  if r.s == 'I' then return head .. struct.pack('>I4c0I4c0', #r.w, r.w, #r.k, r.k) end
  if r.s == 'C' then return head .. struct.pack('>I4c0', #r.r, r.r) end
  return head
end

-- \`headOnly\`: without the owner, the store key and the result (a caller that replaces the
-- record whole and answers no record needs none of them).
local function unpackRecord(v, headOnly)
  local s, n, a, t1, t2, flags, f, t, pos = struct.unpack(HEAD, v)
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = struct.unpack('>I4c0I4c0', v, pos)
  elseif s == 'C' then
    r.r = struct.unpack('>I4c0', v, pos)
  end
  return r
end

-- HSET in chunks: unpack() of thousands of values would overflow Lua's C stack.
local function hsetAll(key, fields)
  for i = 1, #fields, 400 do
    rcall('HSET', key, unpack(fields, i, math.min(i + 399, #fields)))
  end
end

local LEGACY_CORE = { s = true, f = true, n = true, a = true, w = true, l = true, k = true, b = true, c = true,
  x = true, t = true, r = true }

-- A record of the previous layout: rewritten in this one, with the same expiry.
local function convertLegacy(rec)
  local all = rcall('HGETALL', rec)
  local h, extras = {}, {}
  for i = 1, #all, 2 do
    if LEGACY_CORE[all[i]] then
      h[all[i]] = all[i + 1]
    else
      extras[#extras + 1] = all[i]
      extras[#extras + 1] = all[i + 1]
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s or 'F', n = tonumber(h.n) or 0, a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
    flags = 0 }
  if r.s == 'I' then
    r.t1, r.t2, r.w, r.k = tonumber(h.l) or 0, tonumber(h.b) or 0, h.w or '', h.k or ''
  else
    r.t1, r.t2, r.r = tonumber(h.c) or 0, tonumber(h.x) or 0, h.r or ''
  end
  if #extras > 0 then
    r.flags = 1
    hsetAll(rec .. 'x', extras)
    if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
  end
  if at > 0 then
    rcall('SET', rec, packRecord(r), 'PXAT', at)
  else
    rcall('SET', rec, packRecord(r))
  end
  return r
end

-- The packed record stored at \`rec\`, or nil; a record of the previous layout is converted first.
local function loadPacked(rec)
  local v = redis.pcall('GET', rec)
  if type(v) == 'table' then
    if v.err and string.find(v.err, 'WRONGTYPE', 1, true) then return packRecord(convertLegacy(rec)) end
    error(v.err)
  end
  if not v then return nil end
  return v
end

-- The record stored at \`rec\`, or nil (see unpackRecord for \`headOnly\`).
local function loadRecord(rec, headOnly)
  local v = loadPacked(rec)
  if not v then return nil end
  return unpackRecord(v, headOnly)
end

-- Writes \`r\` whole, expiring at \`at\` (ms), its extras hash with it.
local function saveRecord(rec, r, at)
  rcall('SET', rec, packRecord(r), 'PXAT', int(at))
  if r.flags == 1 then rcall('PEXPIREAT', rec .. 'x', int(at)) end
end

-- Drops the extras hash (steps, error, messages) of a record about to be replaced.
local function dropExtras(rec, r)
  if r.flags == 1 then
    rcall('DEL', rec .. 'x')
    r.flags = 0
  end
end

-- The extras hash of \`r\`, flagged on the record (same expiry) when it had none.
local function extrasOf(rec, r)
  local ext = rec .. 'x'
  if r.flags ~= 1 then
    r.flags = 1
    rcall('SET', rec, packRecord(r), 'KEEPTTL')
  end
  return ext
end

-- Gives the extras hash the record's expiry (after a write that may have created it).
local function expireExtrasWithRecord(rec)
  local at = rcall('PEXPIRETIME', rec)
  if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
end

-- What a script answers for a stored record: { packed record, extras hash (flat; empty if none) }.
-- \`packed\`: the record as stored, when \`r\` is unchanged (no need to pack it again).
local function recordReply(rec, r, packed)
  local extras = {}
  if r.flags == 1 then extras = rcall('HGETALL', rec .. 'x') end
  return { packed or packRecord(r), extras }
end
-- markPublishedOne: flags the messages of a live COMPLETED record, completed under \`fence\`, whose
-- ids are keys of \`wanted\` as published. Returns how many were newly flagged.
local function markPublishedOne(rec, fence, wanted, now)
  local r = loadRecord(rec)
  if not r or r.s ~= 'C' or r.t2 <= now or r.n ~= tonumber(fence) or r.flags ~= 1 then return 0 end
  local ext = rec .. 'x'
  local flagged = 0
  for i = 1, tonumber(rcall('HGET', ext, 'm')) or 0 do
    if wanted[rcall('HGET', ext, 'd' .. i)] then flagged = flagged + rcall('HSET', ext, 'p' .. i, '1') end
  end
  return flagged
end

local packed = ARGV[1]
local flagged = 0
local pos, size = 1, #packed
while pos <= size do
  local rec, fence, n
  rec, fence, n, pos = struct.unpack('>I4c0I4c0I4', packed, pos)
  local wanted = {}
  for i = 1, n do
    local id
    id, pos = struct.unpack('>I4c0', packed, pos)
    wanted[id] = true
  end
  if n > 0 then flagged = flagged + markPublishedOne(rec, fence, wanted, now) end
end
return flagged
`,
  },
  markStepStarted: {
    command: 'eoMarkStepStarted_v2_3b57199f',
    numberOfKeys: 1,
    sha1: '3b57199f02f8a562d5508d36f57e8502f0e5f58d',
    lua: `--[[
markStepStarted: journal that a step is about to run, under the IN_PROGRESS record held by the
fence, so a later attempt knows the step is in doubt (see ctx.step's reconcile).

KEYS[1]  record
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
-- The record: one Redis string (see codec.ts for the same layout in TypeScript). All integers
-- big-endian; strings length-prefixed (4 bytes).
--
--   state 1 byte 'I' | 'C' | 'F', fence 6, attempt 4, t1 6, t2 6, flags 1, fingerprint, trace id
--   IN_PROGRESS then: owner, the store key itself (for listInProgress)
--   COMPLETED then:   result
--
-- t1/t2: IN_PROGRESS leaseUntil (0 = released) / the attempt's start; COMPLETED and FAILED
-- completedAt or failedAt / expiresAt. flags 1: the record has an extras hash, named the record's
-- name + 'x' (same hash tag, so the same cluster slot), expiring with it, holding what the hot
-- path never writes: journaled steps 'S<name>', the error 'e', outgoing messages ('m' count,
-- 'd<i>' id, 'o<i>' message, 'p<i>' once published).
--
-- Records of the previous layout (one hash with one-letter fields) are converted when first
-- touched: loadRecord answers them like any other, in the new layout from then on.
local HEAD = '>c1I6I4I6I6BI4c0I4c0'
-- Whole records of the hot path, packed in one call without a table: an IN_PROGRESS record
-- (HEAD, owner, store key) and a COMPLETED one (HEAD, result).
local IN_PROGRESS_RECORD = HEAD .. 'I4c0I4c0'
local COMPLETED_RECORD = HEAD .. 'I4c0'

local function int(n) return string.format('%d', n) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
end

-- What a compaction marker keeps of a fingerprint (encoded): the first 8 bytes of its sha1.
local function markerFingerprint(encoded)
  local hex = redis.sha1hex(encoded)
  local out = {}
  for i = 1, 16, 2 do out[#out + 1] = string.char(tonumber(string.sub(hex, i, i + 1), 16)) end
  return table.concat(out)
end

local function packRecord(r)
  local head = struct.pack(HEAD, r.s, r.n, r.a, r.t1, r.t2, r.flags, #r.f, r.f, #r.t, r.t)
  if r.s == 'I' then return head .. struct.pack('>I4c0I4c0', #r.w, r.w, #r.k, r.k) end
  if r.s == 'C' then return head .. struct.pack('>I4c0', #r.r, r.r) end
  return head
end

-- \`headOnly\`: without the owner, the store key and the result (a caller that replaces the
-- record whole and answers no record needs none of them).
local function unpackRecord(v, headOnly)
  local s, n, a, t1, t2, flags, f, t, pos = struct.unpack(HEAD, v)
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = struct.unpack('>I4c0I4c0', v, pos)
  elseif s == 'C' then
    r.r = struct.unpack('>I4c0', v, pos)
  end
  return r
end

-- HSET in chunks: unpack() of thousands of values would overflow Lua's C stack.
local function hsetAll(key, fields)
  for i = 1, #fields, 400 do
    rcall('HSET', key, unpack(fields, i, math.min(i + 399, #fields)))
  end
end

local LEGACY_CORE = { s = true, f = true, n = true, a = true, w = true, l = true, k = true, b = true, c = true,
  x = true, t = true, r = true }

-- A record of the previous layout: rewritten in this one, with the same expiry.
local function convertLegacy(rec)
  local all = rcall('HGETALL', rec)
  local h, extras = {}, {}
  for i = 1, #all, 2 do
    if LEGACY_CORE[all[i]] then
      h[all[i]] = all[i + 1]
    else
      extras[#extras + 1] = all[i]
      extras[#extras + 1] = all[i + 1]
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s or 'F', n = tonumber(h.n) or 0, a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
    flags = 0 }
  if r.s == 'I' then
    r.t1, r.t2, r.w, r.k = tonumber(h.l) or 0, tonumber(h.b) or 0, h.w or '', h.k or ''
  else
    r.t1, r.t2, r.r = tonumber(h.c) or 0, tonumber(h.x) or 0, h.r or ''
  end
  if #extras > 0 then
    r.flags = 1
    hsetAll(rec .. 'x', extras)
    if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
  end
  if at > 0 then
    rcall('SET', rec, packRecord(r), 'PXAT', at)
  else
    rcall('SET', rec, packRecord(r))
  end
  return r
end

-- The packed record stored at \`rec\`, or nil; a record of the previous layout is converted first.
local function loadPacked(rec)
  local v = redis.pcall('GET', rec)
  if type(v) == 'table' then
    if v.err and string.find(v.err, 'WRONGTYPE', 1, true) then return packRecord(convertLegacy(rec)) end
    error(v.err)
  end
  if not v then return nil end
  return v
end

-- The record stored at \`rec\`, or nil (see unpackRecord for \`headOnly\`).
local function loadRecord(rec, headOnly)
  local v = loadPacked(rec)
  if not v then return nil end
  return unpackRecord(v, headOnly)
end

-- Writes \`r\` whole, expiring at \`at\` (ms), its extras hash with it.
local function saveRecord(rec, r, at)
  rcall('SET', rec, packRecord(r), 'PXAT', int(at))
  if r.flags == 1 then rcall('PEXPIREAT', rec .. 'x', int(at)) end
end

-- Drops the extras hash (steps, error, messages) of a record about to be replaced.
local function dropExtras(rec, r)
  if r.flags == 1 then
    rcall('DEL', rec .. 'x')
    r.flags = 0
  end
end

-- The extras hash of \`r\`, flagged on the record (same expiry) when it had none.
local function extrasOf(rec, r)
  local ext = rec .. 'x'
  if r.flags ~= 1 then
    r.flags = 1
    rcall('SET', rec, packRecord(r), 'KEEPTTL')
  end
  return ext
end

-- Gives the extras hash the record's expiry (after a write that may have created it).
local function expireExtrasWithRecord(rec)
  local at = rcall('PEXPIRETIME', rec)
  if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
end

-- What a script answers for a stored record: { packed record, extras hash (flat; empty if none) }.
-- \`packed\`: the record as stored, when \`r\` is unchanged (no need to pack it again).
local function recordReply(rec, r, packed)
  local extras = {}
  if r.flags == 1 then extras = rcall('HGETALL', rec .. 'x') end
  return { packed or packRecord(r), extras }
end
local rec = KEYS[1]

local r = loadRecord(rec)
if not r or r.s ~= 'I' or r.n ~= tonumber(ARGV[1]) then return 0 end
rcall('HSET', extrasOf(rec, r), 'S' .. ARGV[2], int(now))
expireExtrasWithRecord(rec)
return 1
`,
  },
  release: {
    command: 'eoRelease_v2_6d1badcc',
    numberOfKeys: 1,
    sha1: '6d1badcc360b6f944cf765c53b452f511da4da53',
    lua: `--[[
release: give the lease up after a retryable error; the next begin acquires at once (retry).

KEYS[1]  record
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
-- The record: one Redis string (see codec.ts for the same layout in TypeScript). All integers
-- big-endian; strings length-prefixed (4 bytes).
--
--   state 1 byte 'I' | 'C' | 'F', fence 6, attempt 4, t1 6, t2 6, flags 1, fingerprint, trace id
--   IN_PROGRESS then: owner, the store key itself (for listInProgress)
--   COMPLETED then:   result
--
-- t1/t2: IN_PROGRESS leaseUntil (0 = released) / the attempt's start; COMPLETED and FAILED
-- completedAt or failedAt / expiresAt. flags 1: the record has an extras hash, named the record's
-- name + 'x' (same hash tag, so the same cluster slot), expiring with it, holding what the hot
-- path never writes: journaled steps 'S<name>', the error 'e', outgoing messages ('m' count,
-- 'd<i>' id, 'o<i>' message, 'p<i>' once published).
--
-- Records of the previous layout (one hash with one-letter fields) are converted when first
-- touched: loadRecord answers them like any other, in the new layout from then on.
local HEAD = '>c1I6I4I6I6BI4c0I4c0'
-- Whole records of the hot path, packed in one call without a table: an IN_PROGRESS record
-- (HEAD, owner, store key) and a COMPLETED one (HEAD, result).
local IN_PROGRESS_RECORD = HEAD .. 'I4c0I4c0'
local COMPLETED_RECORD = HEAD .. 'I4c0'

local function int(n) return string.format('%d', n) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
end

-- What a compaction marker keeps of a fingerprint (encoded): the first 8 bytes of its sha1.
local function markerFingerprint(encoded)
  local hex = redis.sha1hex(encoded)
  local out = {}
  for i = 1, 16, 2 do out[#out + 1] = string.char(tonumber(string.sub(hex, i, i + 1), 16)) end
  return table.concat(out)
end

local function packRecord(r)
  local head = struct.pack(HEAD, r.s, r.n, r.a, r.t1, r.t2, r.flags, #r.f, r.f, #r.t, r.t)
  if r.s == 'I' then return head .. struct.pack('>I4c0I4c0', #r.w, r.w, #r.k, r.k) end
  if r.s == 'C' then return head .. struct.pack('>I4c0', #r.r, r.r) end
  return head
end

-- \`headOnly\`: without the owner, the store key and the result (a caller that replaces the
-- record whole and answers no record needs none of them).
local function unpackRecord(v, headOnly)
  local s, n, a, t1, t2, flags, f, t, pos = struct.unpack(HEAD, v)
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = struct.unpack('>I4c0I4c0', v, pos)
  elseif s == 'C' then
    r.r = struct.unpack('>I4c0', v, pos)
  end
  return r
end

-- HSET in chunks: unpack() of thousands of values would overflow Lua's C stack.
local function hsetAll(key, fields)
  for i = 1, #fields, 400 do
    rcall('HSET', key, unpack(fields, i, math.min(i + 399, #fields)))
  end
end

local LEGACY_CORE = { s = true, f = true, n = true, a = true, w = true, l = true, k = true, b = true, c = true,
  x = true, t = true, r = true }

-- A record of the previous layout: rewritten in this one, with the same expiry.
local function convertLegacy(rec)
  local all = rcall('HGETALL', rec)
  local h, extras = {}, {}
  for i = 1, #all, 2 do
    if LEGACY_CORE[all[i]] then
      h[all[i]] = all[i + 1]
    else
      extras[#extras + 1] = all[i]
      extras[#extras + 1] = all[i + 1]
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s or 'F', n = tonumber(h.n) or 0, a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
    flags = 0 }
  if r.s == 'I' then
    r.t1, r.t2, r.w, r.k = tonumber(h.l) or 0, tonumber(h.b) or 0, h.w or '', h.k or ''
  else
    r.t1, r.t2, r.r = tonumber(h.c) or 0, tonumber(h.x) or 0, h.r or ''
  end
  if #extras > 0 then
    r.flags = 1
    hsetAll(rec .. 'x', extras)
    if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
  end
  if at > 0 then
    rcall('SET', rec, packRecord(r), 'PXAT', at)
  else
    rcall('SET', rec, packRecord(r))
  end
  return r
end

-- The packed record stored at \`rec\`, or nil; a record of the previous layout is converted first.
local function loadPacked(rec)
  local v = redis.pcall('GET', rec)
  if type(v) == 'table' then
    if v.err and string.find(v.err, 'WRONGTYPE', 1, true) then return packRecord(convertLegacy(rec)) end
    error(v.err)
  end
  if not v then return nil end
  return v
end

-- The record stored at \`rec\`, or nil (see unpackRecord for \`headOnly\`).
local function loadRecord(rec, headOnly)
  local v = loadPacked(rec)
  if not v then return nil end
  return unpackRecord(v, headOnly)
end

-- Writes \`r\` whole, expiring at \`at\` (ms), its extras hash with it.
local function saveRecord(rec, r, at)
  rcall('SET', rec, packRecord(r), 'PXAT', int(at))
  if r.flags == 1 then rcall('PEXPIREAT', rec .. 'x', int(at)) end
end

-- Drops the extras hash (steps, error, messages) of a record about to be replaced.
local function dropExtras(rec, r)
  if r.flags == 1 then
    rcall('DEL', rec .. 'x')
    r.flags = 0
  end
end

-- The extras hash of \`r\`, flagged on the record (same expiry) when it had none.
local function extrasOf(rec, r)
  local ext = rec .. 'x'
  if r.flags ~= 1 then
    r.flags = 1
    rcall('SET', rec, packRecord(r), 'KEEPTTL')
  end
  return ext
end

-- Gives the extras hash the record's expiry (after a write that may have created it).
local function expireExtrasWithRecord(rec)
  local at = rcall('PEXPIRETIME', rec)
  if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
end

-- What a script answers for a stored record: { packed record, extras hash (flat; empty if none) }.
-- \`packed\`: the record as stored, when \`r\` is unchanged (no need to pack it again).
local function recordReply(rec, r, packed)
  local extras = {}
  if r.flags == 1 then extras = rcall('HGETALL', rec .. 'x') end
  return { packed or packRecord(r), extras }
end
local rec = KEYS[1]

local r = loadRecord(rec)
if not r or r.s ~= 'I' or r.n ~= tonumber(ARGV[1]) then return 0 end
-- Steps and attempt stay: the retry continues where this attempt stopped.
rcall('HSET', rec .. 'x', 'e', ARGV[2])
r.t1, r.flags = 0, 1
saveRecord(rec, r, now + tonumber(ARGV[3]))
return 1
`,
  },
  saveStep: {
    command: 'eoSaveStep_v2_e0f94ea1',
    numberOfKeys: 1,
    sha1: 'e0f94ea17014d9ff6d168ec9d6132c2f4979057a',
    lua: `--[[
saveStep: journal a step's result under the IN_PROGRESS record held by the fence.

KEYS[1]  record
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
-- The record: one Redis string (see codec.ts for the same layout in TypeScript). All integers
-- big-endian; strings length-prefixed (4 bytes).
--
--   state 1 byte 'I' | 'C' | 'F', fence 6, attempt 4, t1 6, t2 6, flags 1, fingerprint, trace id
--   IN_PROGRESS then: owner, the store key itself (for listInProgress)
--   COMPLETED then:   result
--
-- t1/t2: IN_PROGRESS leaseUntil (0 = released) / the attempt's start; COMPLETED and FAILED
-- completedAt or failedAt / expiresAt. flags 1: the record has an extras hash, named the record's
-- name + 'x' (same hash tag, so the same cluster slot), expiring with it, holding what the hot
-- path never writes: journaled steps 'S<name>', the error 'e', outgoing messages ('m' count,
-- 'd<i>' id, 'o<i>' message, 'p<i>' once published).
--
-- Records of the previous layout (one hash with one-letter fields) are converted when first
-- touched: loadRecord answers them like any other, in the new layout from then on.
local HEAD = '>c1I6I4I6I6BI4c0I4c0'
-- Whole records of the hot path, packed in one call without a table: an IN_PROGRESS record
-- (HEAD, owner, store key) and a COMPLETED one (HEAD, result).
local IN_PROGRESS_RECORD = HEAD .. 'I4c0I4c0'
local COMPLETED_RECORD = HEAD .. 'I4c0'

local function int(n) return string.format('%d', n) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
end

-- What a compaction marker keeps of a fingerprint (encoded): the first 8 bytes of its sha1.
local function markerFingerprint(encoded)
  local hex = redis.sha1hex(encoded)
  local out = {}
  for i = 1, 16, 2 do out[#out + 1] = string.char(tonumber(string.sub(hex, i, i + 1), 16)) end
  return table.concat(out)
end

local function packRecord(r)
  local head = struct.pack(HEAD, r.s, r.n, r.a, r.t1, r.t2, r.flags, #r.f, r.f, #r.t, r.t)
  if r.s == 'I' then return head .. struct.pack('>I4c0I4c0', #r.w, r.w, #r.k, r.k) end
  if r.s == 'C' then return head .. struct.pack('>I4c0', #r.r, r.r) end
  return head
end

-- \`headOnly\`: without the owner, the store key and the result (a caller that replaces the
-- record whole and answers no record needs none of them).
local function unpackRecord(v, headOnly)
  local s, n, a, t1, t2, flags, f, t, pos = struct.unpack(HEAD, v)
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = struct.unpack('>I4c0I4c0', v, pos)
  elseif s == 'C' then
    r.r = struct.unpack('>I4c0', v, pos)
  end
  return r
end

-- HSET in chunks: unpack() of thousands of values would overflow Lua's C stack.
local function hsetAll(key, fields)
  for i = 1, #fields, 400 do
    rcall('HSET', key, unpack(fields, i, math.min(i + 399, #fields)))
  end
end

local LEGACY_CORE = { s = true, f = true, n = true, a = true, w = true, l = true, k = true, b = true, c = true,
  x = true, t = true, r = true }

-- A record of the previous layout: rewritten in this one, with the same expiry.
local function convertLegacy(rec)
  local all = rcall('HGETALL', rec)
  local h, extras = {}, {}
  for i = 1, #all, 2 do
    if LEGACY_CORE[all[i]] then
      h[all[i]] = all[i + 1]
    else
      extras[#extras + 1] = all[i]
      extras[#extras + 1] = all[i + 1]
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s or 'F', n = tonumber(h.n) or 0, a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
    flags = 0 }
  if r.s == 'I' then
    r.t1, r.t2, r.w, r.k = tonumber(h.l) or 0, tonumber(h.b) or 0, h.w or '', h.k or ''
  else
    r.t1, r.t2, r.r = tonumber(h.c) or 0, tonumber(h.x) or 0, h.r or ''
  end
  if #extras > 0 then
    r.flags = 1
    hsetAll(rec .. 'x', extras)
    if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
  end
  if at > 0 then
    rcall('SET', rec, packRecord(r), 'PXAT', at)
  else
    rcall('SET', rec, packRecord(r))
  end
  return r
end

-- The packed record stored at \`rec\`, or nil; a record of the previous layout is converted first.
local function loadPacked(rec)
  local v = redis.pcall('GET', rec)
  if type(v) == 'table' then
    if v.err and string.find(v.err, 'WRONGTYPE', 1, true) then return packRecord(convertLegacy(rec)) end
    error(v.err)
  end
  if not v then return nil end
  return v
end

-- The record stored at \`rec\`, or nil (see unpackRecord for \`headOnly\`).
local function loadRecord(rec, headOnly)
  local v = loadPacked(rec)
  if not v then return nil end
  return unpackRecord(v, headOnly)
end

-- Writes \`r\` whole, expiring at \`at\` (ms), its extras hash with it.
local function saveRecord(rec, r, at)
  rcall('SET', rec, packRecord(r), 'PXAT', int(at))
  if r.flags == 1 then rcall('PEXPIREAT', rec .. 'x', int(at)) end
end

-- Drops the extras hash (steps, error, messages) of a record about to be replaced.
local function dropExtras(rec, r)
  if r.flags == 1 then
    rcall('DEL', rec .. 'x')
    r.flags = 0
  end
end

-- The extras hash of \`r\`, flagged on the record (same expiry) when it had none.
local function extrasOf(rec, r)
  local ext = rec .. 'x'
  if r.flags ~= 1 then
    r.flags = 1
    rcall('SET', rec, packRecord(r), 'KEEPTTL')
  end
  return ext
end

-- Gives the extras hash the record's expiry (after a write that may have created it).
local function expireExtrasWithRecord(rec)
  local at = rcall('PEXPIRETIME', rec)
  if at > 0 then rcall('PEXPIREAT', rec .. 'x', at) end
end

-- What a script answers for a stored record: { packed record, extras hash (flat; empty if none) }.
-- \`packed\`: the record as stored, when \`r\` is unchanged (no need to pack it again).
local function recordReply(rec, r, packed)
  local extras = {}
  if r.flags == 1 then extras = rcall('HGETALL', rec .. 'x') end
  return { packed or packRecord(r), extras }
end
local rec = KEYS[1]

local r = loadRecord(rec)
if not r or r.s ~= 'I' or r.n ~= tonumber(ARGV[1]) then return 0 end
rcall('HSET', extrasOf(rec, r), 'S' .. ARGV[2], int(now) .. ':' .. ARGV[3])
expireExtrasWithRecord(rec)
return 1
`,
  },
} as const satisfies Record<string, LuaScript>;
