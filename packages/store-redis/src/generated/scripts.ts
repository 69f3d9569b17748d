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
    command: 'eoBegin_v2_8130eba0',
    numberOfKeys: 3,
    sha1: '8130eba0dbf3430b391e7a9b2f9731f10dac4c5e',
    lua: `--[[
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

local STATES = { I = true, C = true, F = true }

local function int(n) return string.format('%d', n) end

-- A value at a record's name that this store did not write (written, edited or damaged by hand):
-- the call fails for this key with EOCORRUPT, which the client raises as CorruptRecordError (a
-- batch script answers it for this key alone, see beginMany-n.lua).
local function corrupt(why) error({ err = 'EOCORRUPT ' .. why }) end

-- What \`corrupt\` said, when \`e\` (caught by pcall) is its error; nil for any other error. (Redis
-- 7.0 hands pcall an error table as its text.) A WRONGTYPE is damage too: only a value written by
-- hand at one of the keys a record's call touches (its extras hash, its slot's marker bucket or
-- indexes) has another type than this store gives it.
local function corruption(e)
  if type(e) == 'table' then e = e.err end
  if type(e) ~= 'string' then return nil end
  if string.sub(e, 1, 10) == 'EOCORRUPT ' then return string.sub(e, 11) end
  if string.find(e, 'WRONGTYPE', 1, true) then
    return "a value of another type at one of its keys (its record's extras, its slot's marker bucket or an index, its payload's claim)"
  end
end

-- The outcome of \`pcall\` of one key's work: true and its results, or false and what was damaged
-- (corruption) when it refused the key; any other error is raised again and fails the call.
local function forKey(ok, ...)
  if ok then return true, ... end
  local e = ...
  local why = corruption(e)
  if not why then error(e, 0) end
  return false, why
end

-- The probe key of the slot of record \`rec\` (\`<prefix>:{<tag>}p\`), never written.
local function probeOf(rec) return string.sub(rec, 1, -18) .. 'p' end

-- Stops the script while the slot of record \`rec\` is being migrated between Cluster nodes: a
-- command on several keys of a slot in migration, one of them missing (the probe always is), is
-- refused then (ASK on the node the slot leaves, TRYAGAIN on the one it goes to), and the script
-- fails before writing; the caller's retry comes after the move. A batch script is routed by its
-- first key only: without this, sent on to the importing node, it took the keys that had not moved
-- yet for absent (a COMPLETED key begun as new, a held one completed as lost). Outside a
-- migration it is one EXISTS; on a standalone server nothing migrates.
local function refuseMigrating(rec) rcall('EXISTS', rec, probeOf(rec)) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
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
  local ok, s, n, a, t1, t2, flags, f, t, pos = pcall(struct.unpack, HEAD, v)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  -- The tail is read (or, \`headOnly\`, only checked: a record cut short is refused either way).
  local w, k
  if s == 'I' then
    ok, w, k = pcall(struct.unpack, '>I4c0I4c0', v, pos)
  elseif s == 'C' then
    ok, w = pcall(struct.unpack, '>I4c0', v, pos)
  end
  if not ok then corrupt('a record cut short') end
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = w, k
  elseif s == 'C' then
    r.r = w
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
  -- Only a hash can be one; any other type at the name was put there by something else.
  local kind = rcall('TYPE', rec).ok
  if kind ~= 'hash' then corrupt('a ' .. kind .. ' at the record\\'s name') end
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
  -- That layout always wrote a state and a fence: a hash without them is not a record.
  if not STATES[h.s] or not tonumber(h.n) then corrupt('a hash that is not a record') end
  -- Checked before the DEL below: a script is not rolled back, and a failed HSET after it would
  -- leave the record deleted (its key then begun as new).
  if #extras > 0 then
    local extrasKind = rcall('TYPE', rec .. 'x').ok
    if extrasKind ~= 'hash' and extrasKind ~= 'none' then
      corrupt('a ' .. extrasKind .. ' at the record\\'s extras name')
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s, n = tonumber(h.n), a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
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
-- Compaction markers (see layout.ts): one string per cluster slot, shared by the tags of that slot.
-- A 4-byte header (the next sweep of expired entries, in seconds) and then fixed-width entries
-- sorted by id:
--
--   id 10 bytes (the first 10 of the record's 16-byte id) | expiresAt 4 (seconds, rounded up) |
--   fingerprint hash 4 (markerFingerprint)
--
-- 18 bytes a marker, with no per-entry structure: the only overhead is the bucket's key, shared
-- by ~n/13,152 markers. Markers of the previous layout (a hash per tag, \`<prefix>:{<tag>}m\`:
-- 16-byte id -> 6-byte expiresAt in ms .. 8-byte fingerprint hash) are still read until they
-- expire; nothing writes them any more.
local MARKER_HEAD, MARKER_WIDTH, MARKER_WINDOW = 4, 18, 16

-- What a marker keeps of a fingerprint (encoded): the first 4 bytes of its sha1.
local function markerFingerprint(encoded)
  return struct.pack('>I4', tonumber(string.sub(redis.sha1hex(encoded), 1, 8), 16))
end

-- The entry of a COMPLETED record: its 16-byte id, expiry (ms) and fingerprint (encoded). The
-- expiry is kept in whole seconds, rounded up: a marker never ends before its record would have.
local function markerEntry(id, expiresAt, fingerprint)
  return string.sub(id, 1, 10) .. struct.pack('>I4', math.ceil(expiresAt / 1000)) .. markerFingerprint(fingerprint)
end

-- How many entries a bucket string (with its header) of \`bytes\` bytes holds.
local function markerCount(bytes)
  return math.floor((bytes - MARKER_HEAD) / MARKER_WIDTH)
end

-- -1, 0 or 1: the id (a, b, c: its 4, 4 and 2 bytes) against the entry at \`pos\` of \`s\`. Numbers,
-- not strings: Lua compares strings with strcoll, which depends on the server's locale.
local function markerCompare(s, pos, a, b, c)
  local ea, eb, ec = struct.unpack('>I4I4I2', s, pos)
  if a ~= ea then return a < ea and -1 or 1 end
  if b ~= eb then return b < eb and -1 or 1 end
  if c ~= ec then return c < ec and -1 or 1 end
  return 0
end

-- Binary search of the \`n\` entries of \`s\` starting at \`base\`: the index (0-based) of the id and
-- true, or the index it would be inserted at and false.
local function markerSearch(s, base, n, a, b, c)
  local lo, hi = 0, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local r = markerCompare(s, base + mid * MARKER_WIDTH, a, b, c)
    if r == 0 then return mid, true end
    if r < 0 then hi = mid else lo = mid + 1 end
  end
  return lo, false
end

-- The entry of \`id\` (10 bytes) in \`bucket\` without its id (expiresAt, fingerprint hash), or nil;
-- then whether the bucket exists.
-- Ids are uniform (sha256), so the entry's place is estimated from its first 4 bytes and only a
-- window around it is read (GETRANGE of 2 * MARKER_WINDOW + 1 entries); when the id is outside
-- it, the window's edge narrows the estimate for the next read. Reading a 30 KB bucket whole
-- would cost ~35 us; this costs one read, two for big buckets (see the README's CPU figures).
-- The store writes a header and whole entries only: a bucket of any other length was cut or
-- written by hand, and its entries cannot be found (a processed key would read as new).
local function checkBucketLength(len)
  if len > 0 and (len < MARKER_HEAD or (len - MARKER_HEAD) % MARKER_WIDTH ~= 0) then
    corrupt('a marker bucket of ' .. len .. ' bytes, not a header and whole markers')
  end
end

local function findMarker(bucket, id)
  local len = rcall('STRLEN', bucket)
  checkBucketLength(len)
  if len <= MARKER_HEAD then return nil, len > 0 end
  local a, b, c = struct.unpack('>I4I4I2', id)
  local lo, hi = 0, markerCount(len)
  local klo, khi = 0, 4294967296
  while lo < hi do
    local est = lo
    if khi > klo then est = lo + math.floor((a - klo) / (khi - klo) * (hi - lo)) end
    local to = math.min(hi, math.max(lo, est - MARKER_WINDOW) + 2 * MARKER_WINDOW + 1)
    local from = math.max(lo, to - 2 * MARKER_WINDOW - 1)
    local s = rcall('GETRANGE', bucket, MARKER_HEAD + from * MARKER_WIDTH, MARKER_HEAD + to * MARKER_WIDTH - 1)
    local last = 1 + (to - from - 1) * MARKER_WIDTH
    if from > lo and markerCompare(s, 1, a, b, c) < 0 then
      hi, khi = from, struct.unpack('>I4', s, 1)
    elseif to < hi and markerCompare(s, last, a, b, c) > 0 then
      lo, klo = to, struct.unpack('>I4', s, last)
    else
      -- Here if anywhere: a plain search (C), kept only where it starts an entry.
      local at = string.find(s, id, 1, true)
      while at and (at - 1) % MARKER_WIDTH ~= 0 do at = string.find(s, id, at + 1, true) end
      if not at then return nil, true end
      return string.sub(s, at + 10, at + MARKER_WIDTH - 1), true
    end
  end
  return nil, true
end

-- The marker standing in for the record with 16-byte id \`id\`, as scripts answer it (expiresAt
-- in ms, 6 bytes, then the 4-byte fingerprint hash), expired or not; nil when there is none.
-- \`legacy\`: the record's tag bucket of the previous layout.
-- \`present\`: what EXISTS answered for the two buckets, when the caller asked already.
local function markerOf(bucket, legacy, id, present)
  -- One call answers "none" while neither bucket exists (a slot never compacted: most stores).
  present = present or rcall('EXISTS', bucket, legacy)
  if present == 0 then return nil end
  local e, exists = findMarker(bucket, string.sub(id, 1, 10))
  if e then return struct.pack('>I6', struct.unpack('>I4', e) * 1000) .. string.sub(e, 5) end
  if present > (exists and 1 or 0) then
    local old = rcall('HGET', legacy, id)
    if old then return string.sub(old, 1, 10) end
  end
  return nil
end

-- \`body\` (entries only) without the entries expired at \`nowS\`.
local function sweepMarkers(body, nowS)
  local kept, run = {}, nil
  for i = 0, markerCount(MARKER_HEAD + #body) - 1 do
    if struct.unpack('>I4', body, i * MARKER_WIDTH + 11) > nowS then
      run = run or i
    elseif run then
      kept[#kept + 1] = string.sub(body, run * MARKER_WIDTH + 1, i * MARKER_WIDTH)
      run = nil
    end
  end
  if run then kept[#kept + 1] = string.sub(body, run * MARKER_WIDTH + 1) end
  return table.concat(kept)
end

local function entryLess(x, y)
  local a, b, c = struct.unpack('>I4I4I2', x)
  return markerCompare(y, 1, a, b, c) < 0
end

-- Adds \`entries\` (18 bytes each, any order) to \`bucket\`, replacing entries of the same id; at
-- most once a day a write also drops the bucket's expired entries. The bucket is kept until
-- \`keepUntil\` (ms) at least.
local function addMarkers(bucket, entries, now, keepUntil)
  local v = rcall('GET', bucket)
  if v then checkBucketLength(#v) end
  local nextSweep, body = 0, ''
  if v then nextSweep, body = struct.unpack('>I4', v), string.sub(v, MARKER_HEAD + 1) end
  local nowS = math.floor(now / 1000)
  if nowS >= nextSweep then body, nextSweep = sweepMarkers(body, nowS), nowS + 86400 end
  table.sort(entries, entryLess)
  local n, parts, copied, lastId = markerCount(MARKER_HEAD + #body), { struct.pack('>I4', nextSweep) }, 0, nil
  for _, e in ipairs(entries) do
    local id = string.sub(e, 1, 10)
    if id ~= lastId then
      local i, found = markerSearch(body, 1, n, struct.unpack('>I4I4I2', e))
      if i > copied then parts[#parts + 1] = string.sub(body, copied * MARKER_WIDTH + 1, i * MARKER_WIDTH) end
      parts[#parts + 1] = e
      copied = math.max(copied, found and i + 1 or i)
      lastId = id
    end
  end
  if copied < n then parts[#parts + 1] = string.sub(body, copied * MARKER_WIDTH + 1) end
  local at = math.max(rcall('PEXPIRETIME', bucket), keepUntil)
  rcall('SET', bucket, table.concat(parts), 'PXAT', string.format('%d', at))
end

-- Removes the entry of \`id\` (10 bytes) from \`bucket\`; its expiresAt (seconds) if there was one,
-- else 0.
local function removeMarker(bucket, id)
  local v = rcall('GET', bucket)
  if not v or #v <= MARKER_HEAD then return 0 end
  local i, found = markerSearch(v, MARKER_HEAD + 1, markerCount(#v), struct.unpack('>I4I4I2', id))
  if not found then return 0 end
  local at = MARKER_HEAD + i * MARKER_WIDTH
  rcall('SET', bucket, string.sub(v, 1, at) .. string.sub(v, at + MARKER_WIDTH + 1), 'KEEPTTL')
  return struct.unpack('>I4', v, at + 11)
end
-- beginOne: the begin transition of one key (see begin-2.lua for the codes). \`full\` asks for the
-- whole record with a busy answer; batches answer busy with the lease end only.
-- Returns code, payload: 'N' the fence (its lease ends at now + lease); 'R'/'T' the record after the write;
-- 'B' the record, or { leaseUntil } when not \`full\`; 'D'/'F'/'M' the record ({ packed, extras });
-- 'K'/'X' the compaction marker.
-- \`name\` is the store key itself: kept with the attempt's start time while the record is
-- IN_PROGRESS (complete and fail write records without them), for listInProgress.
-- \`bucket\`/\`legacy\`: where a compacted record's marker is (see markerOf), \`id\` its 16-byte id.
-- \`deadline\`: the server time (ms) after which the caller has given up waiting (0 = never).
-- \`cluster\`: true on a Cluster (the probe of refuseMigrating goes with the first read).
-- A new IN_PROGRESS record: attempt 1, its lease from now.
local function newRecord(fence, leaseUntil, now, fp, trace, owner, name)
  return struct.pack(IN_PROGRESS_RECORD, 'I', fence, 1, leaseUntil, now, 0, #fp, fp, #trace, trace, #owner, owner,
    #name, name)
end

local function beginOne(rec, bucket, legacy, fp, owner, lease, trace, ttl, id, now, full, name, deadline, cluster)
  -- Arrived after its caller gave up (the client queued it through an outage): a lease taken now
  -- would be held by nobody, and the key busy until it ran out. Busy with no record: nothing written.
  if deadline > 0 and now > deadline then return 'B', { now } end
  -- Whether the slot holds compaction markers, asked before anything is written and, on a
  -- Cluster, with the slot's probe key (which never exists) among the keys: see refuseMigrating.
  -- A new key needs the answer anyway.
  local present
  if cluster then
    present = rcall('EXISTS', bucket, legacy, probeOf(rec))
  else
    present = rcall('EXISTS', bucket, legacy)
  end
  -- The path of every new key first: the new record is written only if there is none (NX), and
  -- the same call answers the stored one otherwise (GET), so a new key costs one call here.
  -- Fences of new records start at the server clock, so they do not repeat even after the old
  -- record is gone; an expired record still stored also guards against a clock stepping back.
  local leaseUntil = now + lease
  local packed = redis.pcall('SET', rec, newRecord(now, leaseUntil, now, fp, trace, owner, name), 'NX', 'GET', 'PXAT',
    intAt(leaseUntil + ttl))
  if type(packed) == 'table' then
    -- A record of the previous layout (a hash): nothing was written.
    if packed.err and string.find(packed.err, 'WRONGTYPE', 1, true) then
      packed = packRecord(convertLegacy(rec))
    else
      error(packed.err)
    end
  end
  if not packed then
    -- No record was stored: a compacted one may still answer "already processed", in which case
    -- the record just written goes again. An expired marker is left for the bucket's sweep; a new
    -- marker replaces it.
    local found, marker = pcall(markerOf, bucket, legacy, id, present)
    if not found then
      -- A damaged bucket: whether the key was processed and compacted is unknown. The record just
      -- written goes again, so that no later copy takes it over and runs.
      rcall('DEL', rec)
      error(marker, 0)
    end
    if marker and struct.unpack('>I6', marker) > now then
      rcall('DEL', rec)
      if string.sub(marker, 7) ~= markerFingerprint(fp) then return 'X', marker end
      return 'K', marker
    end
    return 'N', now
  end

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

  -- An expired record, still stored for its fence: a new record replaces it.
  local fence = math.max(now, r.n + 1)
  dropExtras(rec, r)
  rcall('SET', rec, newRecord(fence, leaseUntil, now, fp, trace, owner, name), 'PXAT', intAt(leaseUntil + ttl))
  return 'N', fence
end

local code, payload = beginOne(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4],
  tonumber(ARGV[5]), ARGV[6], now, true, ARGV[7], tonumber(ARGV[8]) or 0, ARGV[9] == '1')
return { code, now, payload }
`,
  },
  beginMany: {
    command: 'eoBeginMany_v2_bec4858b',
    numberOfKeys: undefined,
    sha1: 'bec4858bf9e9f6d93f3618e8e4b853cbc41ed226',
    lua: `#!lua flags=allow-cross-slot-keys
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

local STATES = { I = true, C = true, F = true }

local function int(n) return string.format('%d', n) end

-- A value at a record's name that this store did not write (written, edited or damaged by hand):
-- the call fails for this key with EOCORRUPT, which the client raises as CorruptRecordError (a
-- batch script answers it for this key alone, see beginMany-n.lua).
local function corrupt(why) error({ err = 'EOCORRUPT ' .. why }) end

-- What \`corrupt\` said, when \`e\` (caught by pcall) is its error; nil for any other error. (Redis
-- 7.0 hands pcall an error table as its text.) A WRONGTYPE is damage too: only a value written by
-- hand at one of the keys a record's call touches (its extras hash, its slot's marker bucket or
-- indexes) has another type than this store gives it.
local function corruption(e)
  if type(e) == 'table' then e = e.err end
  if type(e) ~= 'string' then return nil end
  if string.sub(e, 1, 10) == 'EOCORRUPT ' then return string.sub(e, 11) end
  if string.find(e, 'WRONGTYPE', 1, true) then
    return "a value of another type at one of its keys (its record's extras, its slot's marker bucket or an index, its payload's claim)"
  end
end

-- The outcome of \`pcall\` of one key's work: true and its results, or false and what was damaged
-- (corruption) when it refused the key; any other error is raised again and fails the call.
local function forKey(ok, ...)
  if ok then return true, ... end
  local e = ...
  local why = corruption(e)
  if not why then error(e, 0) end
  return false, why
end

-- The probe key of the slot of record \`rec\` (\`<prefix>:{<tag>}p\`), never written.
local function probeOf(rec) return string.sub(rec, 1, -18) .. 'p' end

-- Stops the script while the slot of record \`rec\` is being migrated between Cluster nodes: a
-- command on several keys of a slot in migration, one of them missing (the probe always is), is
-- refused then (ASK on the node the slot leaves, TRYAGAIN on the one it goes to), and the script
-- fails before writing; the caller's retry comes after the move. A batch script is routed by its
-- first key only: without this, sent on to the importing node, it took the keys that had not moved
-- yet for absent (a COMPLETED key begun as new, a held one completed as lost). Outside a
-- migration it is one EXISTS; on a standalone server nothing migrates.
local function refuseMigrating(rec) rcall('EXISTS', rec, probeOf(rec)) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
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
  local ok, s, n, a, t1, t2, flags, f, t, pos = pcall(struct.unpack, HEAD, v)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  -- The tail is read (or, \`headOnly\`, only checked: a record cut short is refused either way).
  local w, k
  if s == 'I' then
    ok, w, k = pcall(struct.unpack, '>I4c0I4c0', v, pos)
  elseif s == 'C' then
    ok, w = pcall(struct.unpack, '>I4c0', v, pos)
  end
  if not ok then corrupt('a record cut short') end
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = w, k
  elseif s == 'C' then
    r.r = w
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
  -- Only a hash can be one; any other type at the name was put there by something else.
  local kind = rcall('TYPE', rec).ok
  if kind ~= 'hash' then corrupt('a ' .. kind .. ' at the record\\'s name') end
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
  -- That layout always wrote a state and a fence: a hash without them is not a record.
  if not STATES[h.s] or not tonumber(h.n) then corrupt('a hash that is not a record') end
  -- Checked before the DEL below: a script is not rolled back, and a failed HSET after it would
  -- leave the record deleted (its key then begun as new).
  if #extras > 0 then
    local extrasKind = rcall('TYPE', rec .. 'x').ok
    if extrasKind ~= 'hash' and extrasKind ~= 'none' then
      corrupt('a ' .. extrasKind .. ' at the record\\'s extras name')
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s, n = tonumber(h.n), a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
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
-- Compaction markers (see layout.ts): one string per cluster slot, shared by the tags of that slot.
-- A 4-byte header (the next sweep of expired entries, in seconds) and then fixed-width entries
-- sorted by id:
--
--   id 10 bytes (the first 10 of the record's 16-byte id) | expiresAt 4 (seconds, rounded up) |
--   fingerprint hash 4 (markerFingerprint)
--
-- 18 bytes a marker, with no per-entry structure: the only overhead is the bucket's key, shared
-- by ~n/13,152 markers. Markers of the previous layout (a hash per tag, \`<prefix>:{<tag>}m\`:
-- 16-byte id -> 6-byte expiresAt in ms .. 8-byte fingerprint hash) are still read until they
-- expire; nothing writes them any more.
local MARKER_HEAD, MARKER_WIDTH, MARKER_WINDOW = 4, 18, 16

-- What a marker keeps of a fingerprint (encoded): the first 4 bytes of its sha1.
local function markerFingerprint(encoded)
  return struct.pack('>I4', tonumber(string.sub(redis.sha1hex(encoded), 1, 8), 16))
end

-- The entry of a COMPLETED record: its 16-byte id, expiry (ms) and fingerprint (encoded). The
-- expiry is kept in whole seconds, rounded up: a marker never ends before its record would have.
local function markerEntry(id, expiresAt, fingerprint)
  return string.sub(id, 1, 10) .. struct.pack('>I4', math.ceil(expiresAt / 1000)) .. markerFingerprint(fingerprint)
end

-- How many entries a bucket string (with its header) of \`bytes\` bytes holds.
local function markerCount(bytes)
  return math.floor((bytes - MARKER_HEAD) / MARKER_WIDTH)
end

-- -1, 0 or 1: the id (a, b, c: its 4, 4 and 2 bytes) against the entry at \`pos\` of \`s\`. Numbers,
-- not strings: Lua compares strings with strcoll, which depends on the server's locale.
local function markerCompare(s, pos, a, b, c)
  local ea, eb, ec = struct.unpack('>I4I4I2', s, pos)
  if a ~= ea then return a < ea and -1 or 1 end
  if b ~= eb then return b < eb and -1 or 1 end
  if c ~= ec then return c < ec and -1 or 1 end
  return 0
end

-- Binary search of the \`n\` entries of \`s\` starting at \`base\`: the index (0-based) of the id and
-- true, or the index it would be inserted at and false.
local function markerSearch(s, base, n, a, b, c)
  local lo, hi = 0, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local r = markerCompare(s, base + mid * MARKER_WIDTH, a, b, c)
    if r == 0 then return mid, true end
    if r < 0 then hi = mid else lo = mid + 1 end
  end
  return lo, false
end

-- The entry of \`id\` (10 bytes) in \`bucket\` without its id (expiresAt, fingerprint hash), or nil;
-- then whether the bucket exists.
-- Ids are uniform (sha256), so the entry's place is estimated from its first 4 bytes and only a
-- window around it is read (GETRANGE of 2 * MARKER_WINDOW + 1 entries); when the id is outside
-- it, the window's edge narrows the estimate for the next read. Reading a 30 KB bucket whole
-- would cost ~35 us; this costs one read, two for big buckets (see the README's CPU figures).
-- The store writes a header and whole entries only: a bucket of any other length was cut or
-- written by hand, and its entries cannot be found (a processed key would read as new).
local function checkBucketLength(len)
  if len > 0 and (len < MARKER_HEAD or (len - MARKER_HEAD) % MARKER_WIDTH ~= 0) then
    corrupt('a marker bucket of ' .. len .. ' bytes, not a header and whole markers')
  end
end

local function findMarker(bucket, id)
  local len = rcall('STRLEN', bucket)
  checkBucketLength(len)
  if len <= MARKER_HEAD then return nil, len > 0 end
  local a, b, c = struct.unpack('>I4I4I2', id)
  local lo, hi = 0, markerCount(len)
  local klo, khi = 0, 4294967296
  while lo < hi do
    local est = lo
    if khi > klo then est = lo + math.floor((a - klo) / (khi - klo) * (hi - lo)) end
    local to = math.min(hi, math.max(lo, est - MARKER_WINDOW) + 2 * MARKER_WINDOW + 1)
    local from = math.max(lo, to - 2 * MARKER_WINDOW - 1)
    local s = rcall('GETRANGE', bucket, MARKER_HEAD + from * MARKER_WIDTH, MARKER_HEAD + to * MARKER_WIDTH - 1)
    local last = 1 + (to - from - 1) * MARKER_WIDTH
    if from > lo and markerCompare(s, 1, a, b, c) < 0 then
      hi, khi = from, struct.unpack('>I4', s, 1)
    elseif to < hi and markerCompare(s, last, a, b, c) > 0 then
      lo, klo = to, struct.unpack('>I4', s, last)
    else
      -- Here if anywhere: a plain search (C), kept only where it starts an entry.
      local at = string.find(s, id, 1, true)
      while at and (at - 1) % MARKER_WIDTH ~= 0 do at = string.find(s, id, at + 1, true) end
      if not at then return nil, true end
      return string.sub(s, at + 10, at + MARKER_WIDTH - 1), true
    end
  end
  return nil, true
end

-- The marker standing in for the record with 16-byte id \`id\`, as scripts answer it (expiresAt
-- in ms, 6 bytes, then the 4-byte fingerprint hash), expired or not; nil when there is none.
-- \`legacy\`: the record's tag bucket of the previous layout.
-- \`present\`: what EXISTS answered for the two buckets, when the caller asked already.
local function markerOf(bucket, legacy, id, present)
  -- One call answers "none" while neither bucket exists (a slot never compacted: most stores).
  present = present or rcall('EXISTS', bucket, legacy)
  if present == 0 then return nil end
  local e, exists = findMarker(bucket, string.sub(id, 1, 10))
  if e then return struct.pack('>I6', struct.unpack('>I4', e) * 1000) .. string.sub(e, 5) end
  if present > (exists and 1 or 0) then
    local old = rcall('HGET', legacy, id)
    if old then return string.sub(old, 1, 10) end
  end
  return nil
end

-- \`body\` (entries only) without the entries expired at \`nowS\`.
local function sweepMarkers(body, nowS)
  local kept, run = {}, nil
  for i = 0, markerCount(MARKER_HEAD + #body) - 1 do
    if struct.unpack('>I4', body, i * MARKER_WIDTH + 11) > nowS then
      run = run or i
    elseif run then
      kept[#kept + 1] = string.sub(body, run * MARKER_WIDTH + 1, i * MARKER_WIDTH)
      run = nil
    end
  end
  if run then kept[#kept + 1] = string.sub(body, run * MARKER_WIDTH + 1) end
  return table.concat(kept)
end

local function entryLess(x, y)
  local a, b, c = struct.unpack('>I4I4I2', x)
  return markerCompare(y, 1, a, b, c) < 0
end

-- Adds \`entries\` (18 bytes each, any order) to \`bucket\`, replacing entries of the same id; at
-- most once a day a write also drops the bucket's expired entries. The bucket is kept until
-- \`keepUntil\` (ms) at least.
local function addMarkers(bucket, entries, now, keepUntil)
  local v = rcall('GET', bucket)
  if v then checkBucketLength(#v) end
  local nextSweep, body = 0, ''
  if v then nextSweep, body = struct.unpack('>I4', v), string.sub(v, MARKER_HEAD + 1) end
  local nowS = math.floor(now / 1000)
  if nowS >= nextSweep then body, nextSweep = sweepMarkers(body, nowS), nowS + 86400 end
  table.sort(entries, entryLess)
  local n, parts, copied, lastId = markerCount(MARKER_HEAD + #body), { struct.pack('>I4', nextSweep) }, 0, nil
  for _, e in ipairs(entries) do
    local id = string.sub(e, 1, 10)
    if id ~= lastId then
      local i, found = markerSearch(body, 1, n, struct.unpack('>I4I4I2', e))
      if i > copied then parts[#parts + 1] = string.sub(body, copied * MARKER_WIDTH + 1, i * MARKER_WIDTH) end
      parts[#parts + 1] = e
      copied = math.max(copied, found and i + 1 or i)
      lastId = id
    end
  end
  if copied < n then parts[#parts + 1] = string.sub(body, copied * MARKER_WIDTH + 1) end
  local at = math.max(rcall('PEXPIRETIME', bucket), keepUntil)
  rcall('SET', bucket, table.concat(parts), 'PXAT', string.format('%d', at))
end

-- Removes the entry of \`id\` (10 bytes) from \`bucket\`; its expiresAt (seconds) if there was one,
-- else 0.
local function removeMarker(bucket, id)
  local v = rcall('GET', bucket)
  if not v or #v <= MARKER_HEAD then return 0 end
  local i, found = markerSearch(v, MARKER_HEAD + 1, markerCount(#v), struct.unpack('>I4I4I2', id))
  if not found then return 0 end
  local at = MARKER_HEAD + i * MARKER_WIDTH
  rcall('SET', bucket, string.sub(v, 1, at) .. string.sub(v, at + MARKER_WIDTH + 1), 'KEEPTTL')
  return struct.unpack('>I4', v, at + 11)
end
-- beginOne: the begin transition of one key (see begin-2.lua for the codes). \`full\` asks for the
-- whole record with a busy answer; batches answer busy with the lease end only.
-- Returns code, payload: 'N' the fence (its lease ends at now + lease); 'R'/'T' the record after the write;
-- 'B' the record, or { leaseUntil } when not \`full\`; 'D'/'F'/'M' the record ({ packed, extras });
-- 'K'/'X' the compaction marker.
-- \`name\` is the store key itself: kept with the attempt's start time while the record is
-- IN_PROGRESS (complete and fail write records without them), for listInProgress.
-- \`bucket\`/\`legacy\`: where a compacted record's marker is (see markerOf), \`id\` its 16-byte id.
-- \`deadline\`: the server time (ms) after which the caller has given up waiting (0 = never).
-- \`cluster\`: true on a Cluster (the probe of refuseMigrating goes with the first read).
-- A new IN_PROGRESS record: attempt 1, its lease from now.
local function newRecord(fence, leaseUntil, now, fp, trace, owner, name)
  return struct.pack(IN_PROGRESS_RECORD, 'I', fence, 1, leaseUntil, now, 0, #fp, fp, #trace, trace, #owner, owner,
    #name, name)
end

local function beginOne(rec, bucket, legacy, fp, owner, lease, trace, ttl, id, now, full, name, deadline, cluster)
  -- Arrived after its caller gave up (the client queued it through an outage): a lease taken now
  -- would be held by nobody, and the key busy until it ran out. Busy with no record: nothing written.
  if deadline > 0 and now > deadline then return 'B', { now } end
  -- Whether the slot holds compaction markers, asked before anything is written and, on a
  -- Cluster, with the slot's probe key (which never exists) among the keys: see refuseMigrating.
  -- A new key needs the answer anyway.
  local present
  if cluster then
    present = rcall('EXISTS', bucket, legacy, probeOf(rec))
  else
    present = rcall('EXISTS', bucket, legacy)
  end
  -- The path of every new key first: the new record is written only if there is none (NX), and
  -- the same call answers the stored one otherwise (GET), so a new key costs one call here.
  -- Fences of new records start at the server clock, so they do not repeat even after the old
  -- record is gone; an expired record still stored also guards against a clock stepping back.
  local leaseUntil = now + lease
  local packed = redis.pcall('SET', rec, newRecord(now, leaseUntil, now, fp, trace, owner, name), 'NX', 'GET', 'PXAT',
    intAt(leaseUntil + ttl))
  if type(packed) == 'table' then
    -- A record of the previous layout (a hash): nothing was written.
    if packed.err and string.find(packed.err, 'WRONGTYPE', 1, true) then
      packed = packRecord(convertLegacy(rec))
    else
      error(packed.err)
    end
  end
  if not packed then
    -- No record was stored: a compacted one may still answer "already processed", in which case
    -- the record just written goes again. An expired marker is left for the bucket's sweep; a new
    -- marker replaces it.
    local found, marker = pcall(markerOf, bucket, legacy, id, present)
    if not found then
      -- A damaged bucket: whether the key was processed and compacted is unknown. The record just
      -- written goes again, so that no later copy takes it over and runs.
      rcall('DEL', rec)
      error(marker, 0)
    end
    if marker and struct.unpack('>I6', marker) > now then
      rcall('DEL', rec)
      if string.sub(marker, 7) ~= markerFingerprint(fp) then return 'X', marker end
      return 'K', marker
    end
    return 'N', now
  end

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

  -- An expired record, still stored for its fence: a new record replaces it.
  local fence = math.max(now, r.n + 1)
  dropExtras(rec, r)
  rcall('SET', rec, newRecord(fence, leaseUntil, now, fp, trace, owner, name), 'PXAT', intAt(leaseUntil + ttl))
  return 'N', fence
end

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
`,
  },
  blobsDue: {
    command: 'eoBlobsDue_v2_ef10d147',
    numberOfKeys: 1,
    sha1: 'ef10d1470a5f46e59d5146d447472aac7596a1f9',
    lua: `#!lua flags=allow-cross-slot-keys
--[[
blobsDue: the blob index entries whose records have passed their physical end, for some tags at
once (of several cluster slots of one node: a blob collection pass reads many tags per call). The
indexes go as arguments, as in compactCandidates-1.lua (a Cluster refuses declared keys of several
slots).

KEYS[1]      the first index: it routes the call (on a Cluster, to the node of its slot)
ARGV[1]      the server time (ms) up to which entries are due (an entry's score is its record's end)
ARGV[2]      how many entries to return per index
ARGV[3] ...  the blob indexes of the tags (sorted sets: packed pointer -> end), the first one again
             first

Returns one list per index, in ARGV order: the due members (packed pointers), earliest first.
]]
local rcall = redis.call
local out, now, count = {}, ARGV[1], ARGV[2]
for i = 3, #ARGV do out[i - 2] = rcall('ZRANGE', ARGV[i], '-inf', now, 'BYSCORE', 'LIMIT', 0, count) end
return out
`,
  },
  clear: {
    command: 'eoClear_v2_b8898bf6',
    numberOfKeys: 4,
    sha1: 'b8898bf62083ab645e0ffa5d18b694b5e147acc7',
    lua: `--[[
clear: forget a key's record (or its compaction marker), so the next message with the key runs
anew: an operator's step before replaying a dead letter whose record is FAILED, or re-running
a COMPLETED one on purpose. A record held under a live lease is left alone.

KEYS[1]  record
KEYS[2]  compaction-marker bucket of the key's cluster slot (includes/markers.lua)
KEYS[3]  compaction-marker bucket of the key's hash tag, previous layout
KEYS[4]  completion index of the key's hash tag
ARGV[1]  record id (16 bytes): the index member (and the previous layout's marker field)
ARGV[2]  grace (ms) the cleared record is kept as an expired tombstone
ARGV[3]  fence of the FAILED record the caller read, or '': only that record is cleared

The record is not deleted but replaced by an expired tombstone holding only its fence, kept for
the grace: the next begin reads it as absent and still starts above its fence, even within the
same millisecond.

Returns:
  1  cleared: the record or its marker was forgotten
  0  absent: nothing was stored for the key (or only an expired record or marker)
 -1  busy: the record is IN_PROGRESS under a live lease (nothing changed)
 -2  changed: with ARGV[3], the key holds another record than that FAILED one (COMPLETED, a
     compaction marker, IN_PROGRESS, FAILED under another fence): nothing changed
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

local STATES = { I = true, C = true, F = true }

local function int(n) return string.format('%d', n) end

-- A value at a record's name that this store did not write (written, edited or damaged by hand):
-- the call fails for this key with EOCORRUPT, which the client raises as CorruptRecordError (a
-- batch script answers it for this key alone, see beginMany-n.lua).
local function corrupt(why) error({ err = 'EOCORRUPT ' .. why }) end

-- What \`corrupt\` said, when \`e\` (caught by pcall) is its error; nil for any other error. (Redis
-- 7.0 hands pcall an error table as its text.) A WRONGTYPE is damage too: only a value written by
-- hand at one of the keys a record's call touches (its extras hash, its slot's marker bucket or
-- indexes) has another type than this store gives it.
local function corruption(e)
  if type(e) == 'table' then e = e.err end
  if type(e) ~= 'string' then return nil end
  if string.sub(e, 1, 10) == 'EOCORRUPT ' then return string.sub(e, 11) end
  if string.find(e, 'WRONGTYPE', 1, true) then
    return "a value of another type at one of its keys (its record's extras, its slot's marker bucket or an index, its payload's claim)"
  end
end

-- The outcome of \`pcall\` of one key's work: true and its results, or false and what was damaged
-- (corruption) when it refused the key; any other error is raised again and fails the call.
local function forKey(ok, ...)
  if ok then return true, ... end
  local e = ...
  local why = corruption(e)
  if not why then error(e, 0) end
  return false, why
end

-- The probe key of the slot of record \`rec\` (\`<prefix>:{<tag>}p\`), never written.
local function probeOf(rec) return string.sub(rec, 1, -18) .. 'p' end

-- Stops the script while the slot of record \`rec\` is being migrated between Cluster nodes: a
-- command on several keys of a slot in migration, one of them missing (the probe always is), is
-- refused then (ASK on the node the slot leaves, TRYAGAIN on the one it goes to), and the script
-- fails before writing; the caller's retry comes after the move. A batch script is routed by its
-- first key only: without this, sent on to the importing node, it took the keys that had not moved
-- yet for absent (a COMPLETED key begun as new, a held one completed as lost). Outside a
-- migration it is one EXISTS; on a standalone server nothing migrates.
local function refuseMigrating(rec) rcall('EXISTS', rec, probeOf(rec)) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
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
  local ok, s, n, a, t1, t2, flags, f, t, pos = pcall(struct.unpack, HEAD, v)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  -- The tail is read (or, \`headOnly\`, only checked: a record cut short is refused either way).
  local w, k
  if s == 'I' then
    ok, w, k = pcall(struct.unpack, '>I4c0I4c0', v, pos)
  elseif s == 'C' then
    ok, w = pcall(struct.unpack, '>I4c0', v, pos)
  end
  if not ok then corrupt('a record cut short') end
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = w, k
  elseif s == 'C' then
    r.r = w
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
  -- Only a hash can be one; any other type at the name was put there by something else.
  local kind = rcall('TYPE', rec).ok
  if kind ~= 'hash' then corrupt('a ' .. kind .. ' at the record\\'s name') end
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
  -- That layout always wrote a state and a fence: a hash without them is not a record.
  if not STATES[h.s] or not tonumber(h.n) then corrupt('a hash that is not a record') end
  -- Checked before the DEL below: a script is not rolled back, and a failed HSET after it would
  -- leave the record deleted (its key then begun as new).
  if #extras > 0 then
    local extrasKind = rcall('TYPE', rec .. 'x').ok
    if extrasKind ~= 'hash' and extrasKind ~= 'none' then
      corrupt('a ' .. extrasKind .. ' at the record\\'s extras name')
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s, n = tonumber(h.n), a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
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
-- Compaction markers (see layout.ts): one string per cluster slot, shared by the tags of that slot.
-- A 4-byte header (the next sweep of expired entries, in seconds) and then fixed-width entries
-- sorted by id:
--
--   id 10 bytes (the first 10 of the record's 16-byte id) | expiresAt 4 (seconds, rounded up) |
--   fingerprint hash 4 (markerFingerprint)
--
-- 18 bytes a marker, with no per-entry structure: the only overhead is the bucket's key, shared
-- by ~n/13,152 markers. Markers of the previous layout (a hash per tag, \`<prefix>:{<tag>}m\`:
-- 16-byte id -> 6-byte expiresAt in ms .. 8-byte fingerprint hash) are still read until they
-- expire; nothing writes them any more.
local MARKER_HEAD, MARKER_WIDTH, MARKER_WINDOW = 4, 18, 16

-- What a marker keeps of a fingerprint (encoded): the first 4 bytes of its sha1.
local function markerFingerprint(encoded)
  return struct.pack('>I4', tonumber(string.sub(redis.sha1hex(encoded), 1, 8), 16))
end

-- The entry of a COMPLETED record: its 16-byte id, expiry (ms) and fingerprint (encoded). The
-- expiry is kept in whole seconds, rounded up: a marker never ends before its record would have.
local function markerEntry(id, expiresAt, fingerprint)
  return string.sub(id, 1, 10) .. struct.pack('>I4', math.ceil(expiresAt / 1000)) .. markerFingerprint(fingerprint)
end

-- How many entries a bucket string (with its header) of \`bytes\` bytes holds.
local function markerCount(bytes)
  return math.floor((bytes - MARKER_HEAD) / MARKER_WIDTH)
end

-- -1, 0 or 1: the id (a, b, c: its 4, 4 and 2 bytes) against the entry at \`pos\` of \`s\`. Numbers,
-- not strings: Lua compares strings with strcoll, which depends on the server's locale.
local function markerCompare(s, pos, a, b, c)
  local ea, eb, ec = struct.unpack('>I4I4I2', s, pos)
  if a ~= ea then return a < ea and -1 or 1 end
  if b ~= eb then return b < eb and -1 or 1 end
  if c ~= ec then return c < ec and -1 or 1 end
  return 0
end

-- Binary search of the \`n\` entries of \`s\` starting at \`base\`: the index (0-based) of the id and
-- true, or the index it would be inserted at and false.
local function markerSearch(s, base, n, a, b, c)
  local lo, hi = 0, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local r = markerCompare(s, base + mid * MARKER_WIDTH, a, b, c)
    if r == 0 then return mid, true end
    if r < 0 then hi = mid else lo = mid + 1 end
  end
  return lo, false
end

-- The entry of \`id\` (10 bytes) in \`bucket\` without its id (expiresAt, fingerprint hash), or nil;
-- then whether the bucket exists.
-- Ids are uniform (sha256), so the entry's place is estimated from its first 4 bytes and only a
-- window around it is read (GETRANGE of 2 * MARKER_WINDOW + 1 entries); when the id is outside
-- it, the window's edge narrows the estimate for the next read. Reading a 30 KB bucket whole
-- would cost ~35 us; this costs one read, two for big buckets (see the README's CPU figures).
-- The store writes a header and whole entries only: a bucket of any other length was cut or
-- written by hand, and its entries cannot be found (a processed key would read as new).
local function checkBucketLength(len)
  if len > 0 and (len < MARKER_HEAD or (len - MARKER_HEAD) % MARKER_WIDTH ~= 0) then
    corrupt('a marker bucket of ' .. len .. ' bytes, not a header and whole markers')
  end
end

local function findMarker(bucket, id)
  local len = rcall('STRLEN', bucket)
  checkBucketLength(len)
  if len <= MARKER_HEAD then return nil, len > 0 end
  local a, b, c = struct.unpack('>I4I4I2', id)
  local lo, hi = 0, markerCount(len)
  local klo, khi = 0, 4294967296
  while lo < hi do
    local est = lo
    if khi > klo then est = lo + math.floor((a - klo) / (khi - klo) * (hi - lo)) end
    local to = math.min(hi, math.max(lo, est - MARKER_WINDOW) + 2 * MARKER_WINDOW + 1)
    local from = math.max(lo, to - 2 * MARKER_WINDOW - 1)
    local s = rcall('GETRANGE', bucket, MARKER_HEAD + from * MARKER_WIDTH, MARKER_HEAD + to * MARKER_WIDTH - 1)
    local last = 1 + (to - from - 1) * MARKER_WIDTH
    if from > lo and markerCompare(s, 1, a, b, c) < 0 then
      hi, khi = from, struct.unpack('>I4', s, 1)
    elseif to < hi and markerCompare(s, last, a, b, c) > 0 then
      lo, klo = to, struct.unpack('>I4', s, last)
    else
      -- Here if anywhere: a plain search (C), kept only where it starts an entry.
      local at = string.find(s, id, 1, true)
      while at and (at - 1) % MARKER_WIDTH ~= 0 do at = string.find(s, id, at + 1, true) end
      if not at then return nil, true end
      return string.sub(s, at + 10, at + MARKER_WIDTH - 1), true
    end
  end
  return nil, true
end

-- The marker standing in for the record with 16-byte id \`id\`, as scripts answer it (expiresAt
-- in ms, 6 bytes, then the 4-byte fingerprint hash), expired or not; nil when there is none.
-- \`legacy\`: the record's tag bucket of the previous layout.
-- \`present\`: what EXISTS answered for the two buckets, when the caller asked already.
local function markerOf(bucket, legacy, id, present)
  -- One call answers "none" while neither bucket exists (a slot never compacted: most stores).
  present = present or rcall('EXISTS', bucket, legacy)
  if present == 0 then return nil end
  local e, exists = findMarker(bucket, string.sub(id, 1, 10))
  if e then return struct.pack('>I6', struct.unpack('>I4', e) * 1000) .. string.sub(e, 5) end
  if present > (exists and 1 or 0) then
    local old = rcall('HGET', legacy, id)
    if old then return string.sub(old, 1, 10) end
  end
  return nil
end

-- \`body\` (entries only) without the entries expired at \`nowS\`.
local function sweepMarkers(body, nowS)
  local kept, run = {}, nil
  for i = 0, markerCount(MARKER_HEAD + #body) - 1 do
    if struct.unpack('>I4', body, i * MARKER_WIDTH + 11) > nowS then
      run = run or i
    elseif run then
      kept[#kept + 1] = string.sub(body, run * MARKER_WIDTH + 1, i * MARKER_WIDTH)
      run = nil
    end
  end
  if run then kept[#kept + 1] = string.sub(body, run * MARKER_WIDTH + 1) end
  return table.concat(kept)
end

local function entryLess(x, y)
  local a, b, c = struct.unpack('>I4I4I2', x)
  return markerCompare(y, 1, a, b, c) < 0
end

-- Adds \`entries\` (18 bytes each, any order) to \`bucket\`, replacing entries of the same id; at
-- most once a day a write also drops the bucket's expired entries. The bucket is kept until
-- \`keepUntil\` (ms) at least.
local function addMarkers(bucket, entries, now, keepUntil)
  local v = rcall('GET', bucket)
  if v then checkBucketLength(#v) end
  local nextSweep, body = 0, ''
  if v then nextSweep, body = struct.unpack('>I4', v), string.sub(v, MARKER_HEAD + 1) end
  local nowS = math.floor(now / 1000)
  if nowS >= nextSweep then body, nextSweep = sweepMarkers(body, nowS), nowS + 86400 end
  table.sort(entries, entryLess)
  local n, parts, copied, lastId = markerCount(MARKER_HEAD + #body), { struct.pack('>I4', nextSweep) }, 0, nil
  for _, e in ipairs(entries) do
    local id = string.sub(e, 1, 10)
    if id ~= lastId then
      local i, found = markerSearch(body, 1, n, struct.unpack('>I4I4I2', e))
      if i > copied then parts[#parts + 1] = string.sub(body, copied * MARKER_WIDTH + 1, i * MARKER_WIDTH) end
      parts[#parts + 1] = e
      copied = math.max(copied, found and i + 1 or i)
      lastId = id
    end
  end
  if copied < n then parts[#parts + 1] = string.sub(body, copied * MARKER_WIDTH + 1) end
  local at = math.max(rcall('PEXPIRETIME', bucket), keepUntil)
  rcall('SET', bucket, table.concat(parts), 'PXAT', string.format('%d', at))
end

-- Removes the entry of \`id\` (10 bytes) from \`bucket\`; its expiresAt (seconds) if there was one,
-- else 0.
local function removeMarker(bucket, id)
  local v = rcall('GET', bucket)
  if not v or #v <= MARKER_HEAD then return 0 end
  local i, found = markerSearch(v, MARKER_HEAD + 1, markerCount(#v), struct.unpack('>I4I4I2', id))
  if not found then return 0 end
  local at = MARKER_HEAD + i * MARKER_WIDTH
  rcall('SET', bucket, string.sub(v, 1, at) .. string.sub(v, at + MARKER_WIDTH + 1), 'KEEPTTL')
  return struct.unpack('>I4', v, at + 11)
end
local rec, bucket, legacy, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local r = loadRecord(rec)
local live = r and (r.s == 'I' or r.t2 > now)
local failedFence = tonumber(ARGV[3])
if failedFence then
  if live and (r.s ~= 'F' or r.n ~= failedFence) then return -2 end
  if not live then
    local m = markerOf(bucket, legacy, ARGV[1])
    if m and struct.unpack('>I6', m) > now then return -2 end
  end
end
if r and r.s == 'I' and r.t1 > now then return -1 end
-- A marker counts only while it answers for the key: an expired one is removed, but was absent.
local removed = 0
if removeMarker(bucket, string.sub(ARGV[1], 1, 10)) * 1000 > now then removed = 1 end
local old = rcall('HGET', legacy, ARGV[1])
if old then
  rcall('HDEL', legacy, ARGV[1])
  if struct.unpack('>I6', old) > now then removed = 1 end
end
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
    command: 'eoCompactCandidates_v2_95a16edb',
    numberOfKeys: 1,
    sha1: '95a16edbea07ea51ecab669c6cb711392844e5cf',
    lua: `#!lua flags=allow-cross-slot-keys
--[[
compactCandidates: the oldest entries of the completion indexes of some tags, as binary-safe ids.
The tags may be of several cluster slots of one node: a pass reads many slots' indexes per call.
A Cluster refuses declared keys of several slots (CROSSSLOT), so the indexes go as arguments
(like beginMany's records) and allow-cross-slot-keys lets the script reach them on this node.

KEYS[1]      the first index: it routes the call (on a Cluster, to the node of its slot)
ARGV[1]      how many entries to return per index
ARGV[2] ...  the completion indexes of the tags (sorted sets: record id -> completedAt), the
             first one again first

Returns one list per index, in ARGV order: record ids (16 bytes each), oldest completion first.
]]
local rcall = redis.call
local out, count = {}, tonumber(ARGV[1]) - 1
for i = 2, #ARGV do out[i - 1] = rcall('ZRANGE', ARGV[i], 0, count) end
return out
`,
  },
  compactCompleted: {
    command: 'eoCompactCompleted_v2_d7173a88',
    numberOfKeys: undefined,
    sha1: 'd7173a886bec66120a0e2ec67fa9ceb1fdb6eb77',
    lua: `--[[
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

local STATES = { I = true, C = true, F = true }

local function int(n) return string.format('%d', n) end

-- A value at a record's name that this store did not write (written, edited or damaged by hand):
-- the call fails for this key with EOCORRUPT, which the client raises as CorruptRecordError (a
-- batch script answers it for this key alone, see beginMany-n.lua).
local function corrupt(why) error({ err = 'EOCORRUPT ' .. why }) end

-- What \`corrupt\` said, when \`e\` (caught by pcall) is its error; nil for any other error. (Redis
-- 7.0 hands pcall an error table as its text.) A WRONGTYPE is damage too: only a value written by
-- hand at one of the keys a record's call touches (its extras hash, its slot's marker bucket or
-- indexes) has another type than this store gives it.
local function corruption(e)
  if type(e) == 'table' then e = e.err end
  if type(e) ~= 'string' then return nil end
  if string.sub(e, 1, 10) == 'EOCORRUPT ' then return string.sub(e, 11) end
  if string.find(e, 'WRONGTYPE', 1, true) then
    return "a value of another type at one of its keys (its record's extras, its slot's marker bucket or an index, its payload's claim)"
  end
end

-- The outcome of \`pcall\` of one key's work: true and its results, or false and what was damaged
-- (corruption) when it refused the key; any other error is raised again and fails the call.
local function forKey(ok, ...)
  if ok then return true, ... end
  local e = ...
  local why = corruption(e)
  if not why then error(e, 0) end
  return false, why
end

-- The probe key of the slot of record \`rec\` (\`<prefix>:{<tag>}p\`), never written.
local function probeOf(rec) return string.sub(rec, 1, -18) .. 'p' end

-- Stops the script while the slot of record \`rec\` is being migrated between Cluster nodes: a
-- command on several keys of a slot in migration, one of them missing (the probe always is), is
-- refused then (ASK on the node the slot leaves, TRYAGAIN on the one it goes to), and the script
-- fails before writing; the caller's retry comes after the move. A batch script is routed by its
-- first key only: without this, sent on to the importing node, it took the keys that had not moved
-- yet for absent (a COMPLETED key begun as new, a held one completed as lost). Outside a
-- migration it is one EXISTS; on a standalone server nothing migrates.
local function refuseMigrating(rec) rcall('EXISTS', rec, probeOf(rec)) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
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
  local ok, s, n, a, t1, t2, flags, f, t, pos = pcall(struct.unpack, HEAD, v)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  -- The tail is read (or, \`headOnly\`, only checked: a record cut short is refused either way).
  local w, k
  if s == 'I' then
    ok, w, k = pcall(struct.unpack, '>I4c0I4c0', v, pos)
  elseif s == 'C' then
    ok, w = pcall(struct.unpack, '>I4c0', v, pos)
  end
  if not ok then corrupt('a record cut short') end
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = w, k
  elseif s == 'C' then
    r.r = w
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
  -- Only a hash can be one; any other type at the name was put there by something else.
  local kind = rcall('TYPE', rec).ok
  if kind ~= 'hash' then corrupt('a ' .. kind .. ' at the record\\'s name') end
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
  -- That layout always wrote a state and a fence: a hash without them is not a record.
  if not STATES[h.s] or not tonumber(h.n) then corrupt('a hash that is not a record') end
  -- Checked before the DEL below: a script is not rolled back, and a failed HSET after it would
  -- leave the record deleted (its key then begun as new).
  if #extras > 0 then
    local extrasKind = rcall('TYPE', rec .. 'x').ok
    if extrasKind ~= 'hash' and extrasKind ~= 'none' then
      corrupt('a ' .. extrasKind .. ' at the record\\'s extras name')
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s, n = tonumber(h.n), a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
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
-- Compaction markers (see layout.ts): one string per cluster slot, shared by the tags of that slot.
-- A 4-byte header (the next sweep of expired entries, in seconds) and then fixed-width entries
-- sorted by id:
--
--   id 10 bytes (the first 10 of the record's 16-byte id) | expiresAt 4 (seconds, rounded up) |
--   fingerprint hash 4 (markerFingerprint)
--
-- 18 bytes a marker, with no per-entry structure: the only overhead is the bucket's key, shared
-- by ~n/13,152 markers. Markers of the previous layout (a hash per tag, \`<prefix>:{<tag>}m\`:
-- 16-byte id -> 6-byte expiresAt in ms .. 8-byte fingerprint hash) are still read until they
-- expire; nothing writes them any more.
local MARKER_HEAD, MARKER_WIDTH, MARKER_WINDOW = 4, 18, 16

-- What a marker keeps of a fingerprint (encoded): the first 4 bytes of its sha1.
local function markerFingerprint(encoded)
  return struct.pack('>I4', tonumber(string.sub(redis.sha1hex(encoded), 1, 8), 16))
end

-- The entry of a COMPLETED record: its 16-byte id, expiry (ms) and fingerprint (encoded). The
-- expiry is kept in whole seconds, rounded up: a marker never ends before its record would have.
local function markerEntry(id, expiresAt, fingerprint)
  return string.sub(id, 1, 10) .. struct.pack('>I4', math.ceil(expiresAt / 1000)) .. markerFingerprint(fingerprint)
end

-- How many entries a bucket string (with its header) of \`bytes\` bytes holds.
local function markerCount(bytes)
  return math.floor((bytes - MARKER_HEAD) / MARKER_WIDTH)
end

-- -1, 0 or 1: the id (a, b, c: its 4, 4 and 2 bytes) against the entry at \`pos\` of \`s\`. Numbers,
-- not strings: Lua compares strings with strcoll, which depends on the server's locale.
local function markerCompare(s, pos, a, b, c)
  local ea, eb, ec = struct.unpack('>I4I4I2', s, pos)
  if a ~= ea then return a < ea and -1 or 1 end
  if b ~= eb then return b < eb and -1 or 1 end
  if c ~= ec then return c < ec and -1 or 1 end
  return 0
end

-- Binary search of the \`n\` entries of \`s\` starting at \`base\`: the index (0-based) of the id and
-- true, or the index it would be inserted at and false.
local function markerSearch(s, base, n, a, b, c)
  local lo, hi = 0, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local r = markerCompare(s, base + mid * MARKER_WIDTH, a, b, c)
    if r == 0 then return mid, true end
    if r < 0 then hi = mid else lo = mid + 1 end
  end
  return lo, false
end

-- The entry of \`id\` (10 bytes) in \`bucket\` without its id (expiresAt, fingerprint hash), or nil;
-- then whether the bucket exists.
-- Ids are uniform (sha256), so the entry's place is estimated from its first 4 bytes and only a
-- window around it is read (GETRANGE of 2 * MARKER_WINDOW + 1 entries); when the id is outside
-- it, the window's edge narrows the estimate for the next read. Reading a 30 KB bucket whole
-- would cost ~35 us; this costs one read, two for big buckets (see the README's CPU figures).
-- The store writes a header and whole entries only: a bucket of any other length was cut or
-- written by hand, and its entries cannot be found (a processed key would read as new).
local function checkBucketLength(len)
  if len > 0 and (len < MARKER_HEAD or (len - MARKER_HEAD) % MARKER_WIDTH ~= 0) then
    corrupt('a marker bucket of ' .. len .. ' bytes, not a header and whole markers')
  end
end

local function findMarker(bucket, id)
  local len = rcall('STRLEN', bucket)
  checkBucketLength(len)
  if len <= MARKER_HEAD then return nil, len > 0 end
  local a, b, c = struct.unpack('>I4I4I2', id)
  local lo, hi = 0, markerCount(len)
  local klo, khi = 0, 4294967296
  while lo < hi do
    local est = lo
    if khi > klo then est = lo + math.floor((a - klo) / (khi - klo) * (hi - lo)) end
    local to = math.min(hi, math.max(lo, est - MARKER_WINDOW) + 2 * MARKER_WINDOW + 1)
    local from = math.max(lo, to - 2 * MARKER_WINDOW - 1)
    local s = rcall('GETRANGE', bucket, MARKER_HEAD + from * MARKER_WIDTH, MARKER_HEAD + to * MARKER_WIDTH - 1)
    local last = 1 + (to - from - 1) * MARKER_WIDTH
    if from > lo and markerCompare(s, 1, a, b, c) < 0 then
      hi, khi = from, struct.unpack('>I4', s, 1)
    elseif to < hi and markerCompare(s, last, a, b, c) > 0 then
      lo, klo = to, struct.unpack('>I4', s, last)
    else
      -- Here if anywhere: a plain search (C), kept only where it starts an entry.
      local at = string.find(s, id, 1, true)
      while at and (at - 1) % MARKER_WIDTH ~= 0 do at = string.find(s, id, at + 1, true) end
      if not at then return nil, true end
      return string.sub(s, at + 10, at + MARKER_WIDTH - 1), true
    end
  end
  return nil, true
end

-- The marker standing in for the record with 16-byte id \`id\`, as scripts answer it (expiresAt
-- in ms, 6 bytes, then the 4-byte fingerprint hash), expired or not; nil when there is none.
-- \`legacy\`: the record's tag bucket of the previous layout.
-- \`present\`: what EXISTS answered for the two buckets, when the caller asked already.
local function markerOf(bucket, legacy, id, present)
  -- One call answers "none" while neither bucket exists (a slot never compacted: most stores).
  present = present or rcall('EXISTS', bucket, legacy)
  if present == 0 then return nil end
  local e, exists = findMarker(bucket, string.sub(id, 1, 10))
  if e then return struct.pack('>I6', struct.unpack('>I4', e) * 1000) .. string.sub(e, 5) end
  if present > (exists and 1 or 0) then
    local old = rcall('HGET', legacy, id)
    if old then return string.sub(old, 1, 10) end
  end
  return nil
end

-- \`body\` (entries only) without the entries expired at \`nowS\`.
local function sweepMarkers(body, nowS)
  local kept, run = {}, nil
  for i = 0, markerCount(MARKER_HEAD + #body) - 1 do
    if struct.unpack('>I4', body, i * MARKER_WIDTH + 11) > nowS then
      run = run or i
    elseif run then
      kept[#kept + 1] = string.sub(body, run * MARKER_WIDTH + 1, i * MARKER_WIDTH)
      run = nil
    end
  end
  if run then kept[#kept + 1] = string.sub(body, run * MARKER_WIDTH + 1) end
  return table.concat(kept)
end

local function entryLess(x, y)
  local a, b, c = struct.unpack('>I4I4I2', x)
  return markerCompare(y, 1, a, b, c) < 0
end

-- Adds \`entries\` (18 bytes each, any order) to \`bucket\`, replacing entries of the same id; at
-- most once a day a write also drops the bucket's expired entries. The bucket is kept until
-- \`keepUntil\` (ms) at least.
local function addMarkers(bucket, entries, now, keepUntil)
  local v = rcall('GET', bucket)
  if v then checkBucketLength(#v) end
  local nextSweep, body = 0, ''
  if v then nextSweep, body = struct.unpack('>I4', v), string.sub(v, MARKER_HEAD + 1) end
  local nowS = math.floor(now / 1000)
  if nowS >= nextSweep then body, nextSweep = sweepMarkers(body, nowS), nowS + 86400 end
  table.sort(entries, entryLess)
  local n, parts, copied, lastId = markerCount(MARKER_HEAD + #body), { struct.pack('>I4', nextSweep) }, 0, nil
  for _, e in ipairs(entries) do
    local id = string.sub(e, 1, 10)
    if id ~= lastId then
      local i, found = markerSearch(body, 1, n, struct.unpack('>I4I4I2', e))
      if i > copied then parts[#parts + 1] = string.sub(body, copied * MARKER_WIDTH + 1, i * MARKER_WIDTH) end
      parts[#parts + 1] = e
      copied = math.max(copied, found and i + 1 or i)
      lastId = id
    end
  end
  if copied < n then parts[#parts + 1] = string.sub(body, copied * MARKER_WIDTH + 1) end
  local at = math.max(rcall('PEXPIRETIME', bucket), keepUntil)
  rcall('SET', bucket, table.concat(parts), 'PXAT', string.format('%d', at))
end

-- Removes the entry of \`id\` (10 bytes) from \`bucket\`; its expiresAt (seconds) if there was one,
-- else 0.
local function removeMarker(bucket, id)
  local v = rcall('GET', bucket)
  if not v or #v <= MARKER_HEAD then return 0 end
  local i, found = markerSearch(v, MARKER_HEAD + 1, markerCount(#v), struct.unpack('>I4I4I2', id))
  if not found then return 0 end
  local at = MARKER_HEAD + i * MARKER_WIDTH
  rcall('SET', bucket, string.sub(v, 1, at) .. string.sub(v, at + MARKER_WIDTH + 1), 'KEEPTTL')
  return struct.unpack('>I4', v, at + 11)
end

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
`,
  },
  completeMany: {
    command: 'eoCompleteMany_v2_01ec32ed',
    numberOfKeys: undefined,
    sha1: '01ec32edc566b6c9fa196d3642b942f63ad2f5d7',
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
ARGV[2]  '1' on a Cluster (each key's slot is checked for a migration first, see refuseMigrating),
         '0' on a standalone server
ARGV[3]  per key, in order: its record's name (length-prefixed: 4-byte length, then the bytes),
         fence (6 bytes), retention in ms (6 bytes), index flags (1 byte: bit 1, indexed for
         compaction; bit 2, a blob result's pointer goes to the blob index),
         message count n (4 bytes), then length-prefixed: trace id (encoded; '' = keep the stored
         one), result (encoded; '' = none), and n pairs of message id, message (encoded).
         Numbers big-endian. A key's completion and blob indexes are derived from its record's
         name (see layout.ts).

Returns { r1, r2, ... }: per key 1 (ok; also for a record already COMPLETED under this fence) or 0
(lost: not IN_PROGRESS under this fence, or no longer a record at all).
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

local STATES = { I = true, C = true, F = true }

local function int(n) return string.format('%d', n) end

-- A value at a record's name that this store did not write (written, edited or damaged by hand):
-- the call fails for this key with EOCORRUPT, which the client raises as CorruptRecordError (a
-- batch script answers it for this key alone, see beginMany-n.lua).
local function corrupt(why) error({ err = 'EOCORRUPT ' .. why }) end

-- What \`corrupt\` said, when \`e\` (caught by pcall) is its error; nil for any other error. (Redis
-- 7.0 hands pcall an error table as its text.) A WRONGTYPE is damage too: only a value written by
-- hand at one of the keys a record's call touches (its extras hash, its slot's marker bucket or
-- indexes) has another type than this store gives it.
local function corruption(e)
  if type(e) == 'table' then e = e.err end
  if type(e) ~= 'string' then return nil end
  if string.sub(e, 1, 10) == 'EOCORRUPT ' then return string.sub(e, 11) end
  if string.find(e, 'WRONGTYPE', 1, true) then
    return "a value of another type at one of its keys (its record's extras, its slot's marker bucket or an index, its payload's claim)"
  end
end

-- The outcome of \`pcall\` of one key's work: true and its results, or false and what was damaged
-- (corruption) when it refused the key; any other error is raised again and fails the call.
local function forKey(ok, ...)
  if ok then return true, ... end
  local e = ...
  local why = corruption(e)
  if not why then error(e, 0) end
  return false, why
end

-- The probe key of the slot of record \`rec\` (\`<prefix>:{<tag>}p\`), never written.
local function probeOf(rec) return string.sub(rec, 1, -18) .. 'p' end

-- Stops the script while the slot of record \`rec\` is being migrated between Cluster nodes: a
-- command on several keys of a slot in migration, one of them missing (the probe always is), is
-- refused then (ASK on the node the slot leaves, TRYAGAIN on the one it goes to), and the script
-- fails before writing; the caller's retry comes after the move. A batch script is routed by its
-- first key only: without this, sent on to the importing node, it took the keys that had not moved
-- yet for absent (a COMPLETED key begun as new, a held one completed as lost). Outside a
-- migration it is one EXISTS; on a standalone server nothing migrates.
local function refuseMigrating(rec) rcall('EXISTS', rec, probeOf(rec)) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
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
  local ok, s, n, a, t1, t2, flags, f, t, pos = pcall(struct.unpack, HEAD, v)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  -- The tail is read (or, \`headOnly\`, only checked: a record cut short is refused either way).
  local w, k
  if s == 'I' then
    ok, w, k = pcall(struct.unpack, '>I4c0I4c0', v, pos)
  elseif s == 'C' then
    ok, w = pcall(struct.unpack, '>I4c0', v, pos)
  end
  if not ok then corrupt('a record cut short') end
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = w, k
  elseif s == 'C' then
    r.r = w
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
  -- Only a hash can be one; any other type at the name was put there by something else.
  local kind = rcall('TYPE', rec).ok
  if kind ~= 'hash' then corrupt('a ' .. kind .. ' at the record\\'s name') end
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
  -- That layout always wrote a state and a fence: a hash without them is not a record.
  if not STATES[h.s] or not tonumber(h.n) then corrupt('a hash that is not a record') end
  -- Checked before the DEL below: a script is not rolled back, and a failed HSET after it would
  -- leave the record deleted (its key then begun as new).
  if #extras > 0 then
    local extrasKind = rcall('TYPE', rec .. 'x').ok
    if extrasKind ~= 'hash' and extrasKind ~= 'none' then
      corrupt('a ' .. extrasKind .. ' at the record\\'s extras name')
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s, n = tonumber(h.n), a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
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
-- Adds \`id\` to a tag's completion index, which lives as long as its newest record (compaction
-- prunes it meanwhile).
local function indexCompletion(index, id, now, physicalEnd)
  rcall('ZADD', index, int(now), id)
  local ttl = rcall('PTTL', index)
  if ttl < 0 or now + ttl < physicalEnd then rcall('PEXPIREAT', index, int(physicalEnd)) end
end

-- completeOne: IN_PROGRESS(fence) -> COMPLETED of one key (see completeMany-n.lua). \`messages\` holds
-- its outgoing messages as id, message, id, message, ...; \`fence\` is a number.
-- Returns 1 (ok) or 0 (lost). A record already COMPLETED under \`fence\` answers 1 and is left as it
-- is: the caller's earlier complete landed and its answer was lost (only the holder of a fence
-- completes with it).
-- \`tag\` is the record's name without its id (\`<prefix>:{<tag>}\`): the tag's completion index is
-- tag .. 'i', its blob index tag .. 'b'.
-- A blob result's pointer goes into the blob index (member = packed pointer, score = the record's
-- physical end), so collectBlobs can delete the blob once no record names it; not with
-- \`indexBlob\` false (a store whose blobs another store's collection deletes). \`cluster\`: see
-- refuseMigrating.
local function completeOne(rec, tag, fence, retention, grace, trace, result, id, messages, now, indexBlob, cluster)
  if cluster then refuseMigrating(rec) end
  local packed = loadPacked(rec)
  if not packed then return 0 end
  -- The head as locals, not a record table: this runs for every message.
  local ok, s, n, a, _, t2, flags, f, t = pcall(struct.unpack, HEAD, packed)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  if n == fence and s == 'C' and t2 > now then return 1 end
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

  -- The indexes serve blob collection and compaction only: one damaged by hand (another type at
  -- its name) must not undo the completion written above; the record just goes unindexed.
  if indexBlob and string.sub(result, 1, 1) == 'b' then
    forKey(pcall(rcall, 'ZADD', tag .. 'b', 'GT', at, result))
  end
  if id ~= '' then forKey(pcall(indexCompletion, tag .. 'i', id, now, physicalEnd)) end
  return 1
end

local grace, cluster, packed = tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3]
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
  if indexed % 2 == 1 then id = string.sub(rec, -16) end
  -- rec = <prefix>:{<tag>}:<16-byte id>
  local intact, done = forKey(pcall(completeOne, rec, string.sub(rec, 1, -18), fence, retention, grace, trace,
    result, id, messages, now, indexed >= 2, cluster))
  -- A record damaged since its begin no longer holds the fence: lost, for this key alone.
  if not intact then done = 0 end
  out[#out + 1] = done
end
return out
`,
  },
  extend: {
    command: 'eoExtend_v2_b3312022',
    numberOfKeys: 1,
    sha1: 'b33120226c221c62000fa59f6bd8afa54936a8f1',
    lua: `--[[
extend: push the lease of the holding fence out to server now + lease.

KEYS[1]  record
ARGV[1]  fence
ARGV[2]  lease (ms)
ARGV[3]  safety TTL of an IN_PROGRESS record past its lease end (ms)

Returns:
  1  ok
  0  lost: the record is not IN_PROGRESS under this fence, or its lease was released (lease end
     0 or 1): an extension that lands after the release must not make the lease live again
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

local STATES = { I = true, C = true, F = true }

local function int(n) return string.format('%d', n) end

-- A value at a record's name that this store did not write (written, edited or damaged by hand):
-- the call fails for this key with EOCORRUPT, which the client raises as CorruptRecordError (a
-- batch script answers it for this key alone, see beginMany-n.lua).
local function corrupt(why) error({ err = 'EOCORRUPT ' .. why }) end

-- What \`corrupt\` said, when \`e\` (caught by pcall) is its error; nil for any other error. (Redis
-- 7.0 hands pcall an error table as its text.) A WRONGTYPE is damage too: only a value written by
-- hand at one of the keys a record's call touches (its extras hash, its slot's marker bucket or
-- indexes) has another type than this store gives it.
local function corruption(e)
  if type(e) == 'table' then e = e.err end
  if type(e) ~= 'string' then return nil end
  if string.sub(e, 1, 10) == 'EOCORRUPT ' then return string.sub(e, 11) end
  if string.find(e, 'WRONGTYPE', 1, true) then
    return "a value of another type at one of its keys (its record's extras, its slot's marker bucket or an index, its payload's claim)"
  end
end

-- The outcome of \`pcall\` of one key's work: true and its results, or false and what was damaged
-- (corruption) when it refused the key; any other error is raised again and fails the call.
local function forKey(ok, ...)
  if ok then return true, ... end
  local e = ...
  local why = corruption(e)
  if not why then error(e, 0) end
  return false, why
end

-- The probe key of the slot of record \`rec\` (\`<prefix>:{<tag>}p\`), never written.
local function probeOf(rec) return string.sub(rec, 1, -18) .. 'p' end

-- Stops the script while the slot of record \`rec\` is being migrated between Cluster nodes: a
-- command on several keys of a slot in migration, one of them missing (the probe always is), is
-- refused then (ASK on the node the slot leaves, TRYAGAIN on the one it goes to), and the script
-- fails before writing; the caller's retry comes after the move. A batch script is routed by its
-- first key only: without this, sent on to the importing node, it took the keys that had not moved
-- yet for absent (a COMPLETED key begun as new, a held one completed as lost). Outside a
-- migration it is one EXISTS; on a standalone server nothing migrates.
local function refuseMigrating(rec) rcall('EXISTS', rec, probeOf(rec)) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
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
  local ok, s, n, a, t1, t2, flags, f, t, pos = pcall(struct.unpack, HEAD, v)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  -- The tail is read (or, \`headOnly\`, only checked: a record cut short is refused either way).
  local w, k
  if s == 'I' then
    ok, w, k = pcall(struct.unpack, '>I4c0I4c0', v, pos)
  elseif s == 'C' then
    ok, w = pcall(struct.unpack, '>I4c0', v, pos)
  end
  if not ok then corrupt('a record cut short') end
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = w, k
  elseif s == 'C' then
    r.r = w
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
  -- Only a hash can be one; any other type at the name was put there by something else.
  local kind = rcall('TYPE', rec).ok
  if kind ~= 'hash' then corrupt('a ' .. kind .. ' at the record\\'s name') end
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
  -- That layout always wrote a state and a fence: a hash without them is not a record.
  if not STATES[h.s] or not tonumber(h.n) then corrupt('a hash that is not a record') end
  -- Checked before the DEL below: a script is not rolled back, and a failed HSET after it would
  -- leave the record deleted (its key then begun as new).
  if #extras > 0 then
    local extrasKind = rcall('TYPE', rec .. 'x').ok
    if extrasKind ~= 'hash' and extrasKind ~= 'none' then
      corrupt('a ' .. extrasKind .. ' at the record\\'s extras name')
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s, n = tonumber(h.n), a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
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
if not r or r.s ~= 'I' or r.n ~= tonumber(ARGV[1]) or r.t1 <= 1 then return 0 end
r.t1 = now + tonumber(ARGV[2])
saveRecord(rec, r, r.t1 + tonumber(ARGV[3]))
return 1
`,
  },
  fail: {
    command: 'eoFail_v2_c85180ab',
    numberOfKeys: 1,
    sha1: 'c85180ab2c7f6faa7a82c8a5cc888d64aec84d45',
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
  1  ok (also when the record is already FAILED under this fence: the repeat of a fail whose answer
     was lost; a clear's tombstone is expired, so it is not taken for one)
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

local STATES = { I = true, C = true, F = true }

local function int(n) return string.format('%d', n) end

-- A value at a record's name that this store did not write (written, edited or damaged by hand):
-- the call fails for this key with EOCORRUPT, which the client raises as CorruptRecordError (a
-- batch script answers it for this key alone, see beginMany-n.lua).
local function corrupt(why) error({ err = 'EOCORRUPT ' .. why }) end

-- What \`corrupt\` said, when \`e\` (caught by pcall) is its error; nil for any other error. (Redis
-- 7.0 hands pcall an error table as its text.) A WRONGTYPE is damage too: only a value written by
-- hand at one of the keys a record's call touches (its extras hash, its slot's marker bucket or
-- indexes) has another type than this store gives it.
local function corruption(e)
  if type(e) == 'table' then e = e.err end
  if type(e) ~= 'string' then return nil end
  if string.sub(e, 1, 10) == 'EOCORRUPT ' then return string.sub(e, 11) end
  if string.find(e, 'WRONGTYPE', 1, true) then
    return "a value of another type at one of its keys (its record's extras, its slot's marker bucket or an index, its payload's claim)"
  end
end

-- The outcome of \`pcall\` of one key's work: true and its results, or false and what was damaged
-- (corruption) when it refused the key; any other error is raised again and fails the call.
local function forKey(ok, ...)
  if ok then return true, ... end
  local e = ...
  local why = corruption(e)
  if not why then error(e, 0) end
  return false, why
end

-- The probe key of the slot of record \`rec\` (\`<prefix>:{<tag>}p\`), never written.
local function probeOf(rec) return string.sub(rec, 1, -18) .. 'p' end

-- Stops the script while the slot of record \`rec\` is being migrated between Cluster nodes: a
-- command on several keys of a slot in migration, one of them missing (the probe always is), is
-- refused then (ASK on the node the slot leaves, TRYAGAIN on the one it goes to), and the script
-- fails before writing; the caller's retry comes after the move. A batch script is routed by its
-- first key only: without this, sent on to the importing node, it took the keys that had not moved
-- yet for absent (a COMPLETED key begun as new, a held one completed as lost). Outside a
-- migration it is one EXISTS; on a standalone server nothing migrates.
local function refuseMigrating(rec) rcall('EXISTS', rec, probeOf(rec)) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
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
  local ok, s, n, a, t1, t2, flags, f, t, pos = pcall(struct.unpack, HEAD, v)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  -- The tail is read (or, \`headOnly\`, only checked: a record cut short is refused either way).
  local w, k
  if s == 'I' then
    ok, w, k = pcall(struct.unpack, '>I4c0I4c0', v, pos)
  elseif s == 'C' then
    ok, w = pcall(struct.unpack, '>I4c0', v, pos)
  end
  if not ok then corrupt('a record cut short') end
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = w, k
  elseif s == 'C' then
    r.r = w
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
  -- Only a hash can be one; any other type at the name was put there by something else.
  local kind = rcall('TYPE', rec).ok
  if kind ~= 'hash' then corrupt('a ' .. kind .. ' at the record\\'s name') end
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
  -- That layout always wrote a state and a fence: a hash without them is not a record.
  if not STATES[h.s] or not tonumber(h.n) then corrupt('a hash that is not a record') end
  -- Checked before the DEL below: a script is not rolled back, and a failed HSET after it would
  -- leave the record deleted (its key then begun as new).
  if #extras > 0 then
    local extrasKind = rcall('TYPE', rec .. 'x').ok
    if extrasKind ~= 'hash' and extrasKind ~= 'none' then
      corrupt('a ' .. extrasKind .. ' at the record\\'s extras name')
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s, n = tonumber(h.n), a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
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
if r and r.s == 'F' and r.n == tonumber(ARGV[1]) and r.t2 > now then return 1 end
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
    command: 'eoGet_v2_f8e23be4',
    numberOfKeys: 3,
    sha1: 'f8e23be4ea12ae9f81455ee4d73033a2adc19801',
    lua: `--[[
get: read a record, or the compaction marker standing in for it, with the server clock.

KEYS[1]  record
KEYS[2]  compaction-marker bucket of the key's cluster slot (includes/markers.lua)
KEYS[3]  compaction-marker bucket of the key's hash tag, previous layout (read until it expires)
ARGV[1]  record id (16 bytes)

Returns { server now (ms), record ({ packed, extras }; nil when absent), marker (markerOf) or nil }.
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

local STATES = { I = true, C = true, F = true }

local function int(n) return string.format('%d', n) end

-- A value at a record's name that this store did not write (written, edited or damaged by hand):
-- the call fails for this key with EOCORRUPT, which the client raises as CorruptRecordError (a
-- batch script answers it for this key alone, see beginMany-n.lua).
local function corrupt(why) error({ err = 'EOCORRUPT ' .. why }) end

-- What \`corrupt\` said, when \`e\` (caught by pcall) is its error; nil for any other error. (Redis
-- 7.0 hands pcall an error table as its text.) A WRONGTYPE is damage too: only a value written by
-- hand at one of the keys a record's call touches (its extras hash, its slot's marker bucket or
-- indexes) has another type than this store gives it.
local function corruption(e)
  if type(e) == 'table' then e = e.err end
  if type(e) ~= 'string' then return nil end
  if string.sub(e, 1, 10) == 'EOCORRUPT ' then return string.sub(e, 11) end
  if string.find(e, 'WRONGTYPE', 1, true) then
    return "a value of another type at one of its keys (its record's extras, its slot's marker bucket or an index, its payload's claim)"
  end
end

-- The outcome of \`pcall\` of one key's work: true and its results, or false and what was damaged
-- (corruption) when it refused the key; any other error is raised again and fails the call.
local function forKey(ok, ...)
  if ok then return true, ... end
  local e = ...
  local why = corruption(e)
  if not why then error(e, 0) end
  return false, why
end

-- The probe key of the slot of record \`rec\` (\`<prefix>:{<tag>}p\`), never written.
local function probeOf(rec) return string.sub(rec, 1, -18) .. 'p' end

-- Stops the script while the slot of record \`rec\` is being migrated between Cluster nodes: a
-- command on several keys of a slot in migration, one of them missing (the probe always is), is
-- refused then (ASK on the node the slot leaves, TRYAGAIN on the one it goes to), and the script
-- fails before writing; the caller's retry comes after the move. A batch script is routed by its
-- first key only: without this, sent on to the importing node, it took the keys that had not moved
-- yet for absent (a COMPLETED key begun as new, a held one completed as lost). Outside a
-- migration it is one EXISTS; on a standalone server nothing migrates.
local function refuseMigrating(rec) rcall('EXISTS', rec, probeOf(rec)) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
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
  local ok, s, n, a, t1, t2, flags, f, t, pos = pcall(struct.unpack, HEAD, v)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  -- The tail is read (or, \`headOnly\`, only checked: a record cut short is refused either way).
  local w, k
  if s == 'I' then
    ok, w, k = pcall(struct.unpack, '>I4c0I4c0', v, pos)
  elseif s == 'C' then
    ok, w = pcall(struct.unpack, '>I4c0', v, pos)
  end
  if not ok then corrupt('a record cut short') end
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = w, k
  elseif s == 'C' then
    r.r = w
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
  -- Only a hash can be one; any other type at the name was put there by something else.
  local kind = rcall('TYPE', rec).ok
  if kind ~= 'hash' then corrupt('a ' .. kind .. ' at the record\\'s name') end
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
  -- That layout always wrote a state and a fence: a hash without them is not a record.
  if not STATES[h.s] or not tonumber(h.n) then corrupt('a hash that is not a record') end
  -- Checked before the DEL below: a script is not rolled back, and a failed HSET after it would
  -- leave the record deleted (its key then begun as new).
  if #extras > 0 then
    local extrasKind = rcall('TYPE', rec .. 'x').ok
    if extrasKind ~= 'hash' and extrasKind ~= 'none' then
      corrupt('a ' .. extrasKind .. ' at the record\\'s extras name')
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s, n = tonumber(h.n), a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
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
-- Compaction markers (see layout.ts): one string per cluster slot, shared by the tags of that slot.
-- A 4-byte header (the next sweep of expired entries, in seconds) and then fixed-width entries
-- sorted by id:
--
--   id 10 bytes (the first 10 of the record's 16-byte id) | expiresAt 4 (seconds, rounded up) |
--   fingerprint hash 4 (markerFingerprint)
--
-- 18 bytes a marker, with no per-entry structure: the only overhead is the bucket's key, shared
-- by ~n/13,152 markers. Markers of the previous layout (a hash per tag, \`<prefix>:{<tag>}m\`:
-- 16-byte id -> 6-byte expiresAt in ms .. 8-byte fingerprint hash) are still read until they
-- expire; nothing writes them any more.
local MARKER_HEAD, MARKER_WIDTH, MARKER_WINDOW = 4, 18, 16

-- What a marker keeps of a fingerprint (encoded): the first 4 bytes of its sha1.
local function markerFingerprint(encoded)
  return struct.pack('>I4', tonumber(string.sub(redis.sha1hex(encoded), 1, 8), 16))
end

-- The entry of a COMPLETED record: its 16-byte id, expiry (ms) and fingerprint (encoded). The
-- expiry is kept in whole seconds, rounded up: a marker never ends before its record would have.
local function markerEntry(id, expiresAt, fingerprint)
  return string.sub(id, 1, 10) .. struct.pack('>I4', math.ceil(expiresAt / 1000)) .. markerFingerprint(fingerprint)
end

-- How many entries a bucket string (with its header) of \`bytes\` bytes holds.
local function markerCount(bytes)
  return math.floor((bytes - MARKER_HEAD) / MARKER_WIDTH)
end

-- -1, 0 or 1: the id (a, b, c: its 4, 4 and 2 bytes) against the entry at \`pos\` of \`s\`. Numbers,
-- not strings: Lua compares strings with strcoll, which depends on the server's locale.
local function markerCompare(s, pos, a, b, c)
  local ea, eb, ec = struct.unpack('>I4I4I2', s, pos)
  if a ~= ea then return a < ea and -1 or 1 end
  if b ~= eb then return b < eb and -1 or 1 end
  if c ~= ec then return c < ec and -1 or 1 end
  return 0
end

-- Binary search of the \`n\` entries of \`s\` starting at \`base\`: the index (0-based) of the id and
-- true, or the index it would be inserted at and false.
local function markerSearch(s, base, n, a, b, c)
  local lo, hi = 0, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local r = markerCompare(s, base + mid * MARKER_WIDTH, a, b, c)
    if r == 0 then return mid, true end
    if r < 0 then hi = mid else lo = mid + 1 end
  end
  return lo, false
end

-- The entry of \`id\` (10 bytes) in \`bucket\` without its id (expiresAt, fingerprint hash), or nil;
-- then whether the bucket exists.
-- Ids are uniform (sha256), so the entry's place is estimated from its first 4 bytes and only a
-- window around it is read (GETRANGE of 2 * MARKER_WINDOW + 1 entries); when the id is outside
-- it, the window's edge narrows the estimate for the next read. Reading a 30 KB bucket whole
-- would cost ~35 us; this costs one read, two for big buckets (see the README's CPU figures).
-- The store writes a header and whole entries only: a bucket of any other length was cut or
-- written by hand, and its entries cannot be found (a processed key would read as new).
local function checkBucketLength(len)
  if len > 0 and (len < MARKER_HEAD or (len - MARKER_HEAD) % MARKER_WIDTH ~= 0) then
    corrupt('a marker bucket of ' .. len .. ' bytes, not a header and whole markers')
  end
end

local function findMarker(bucket, id)
  local len = rcall('STRLEN', bucket)
  checkBucketLength(len)
  if len <= MARKER_HEAD then return nil, len > 0 end
  local a, b, c = struct.unpack('>I4I4I2', id)
  local lo, hi = 0, markerCount(len)
  local klo, khi = 0, 4294967296
  while lo < hi do
    local est = lo
    if khi > klo then est = lo + math.floor((a - klo) / (khi - klo) * (hi - lo)) end
    local to = math.min(hi, math.max(lo, est - MARKER_WINDOW) + 2 * MARKER_WINDOW + 1)
    local from = math.max(lo, to - 2 * MARKER_WINDOW - 1)
    local s = rcall('GETRANGE', bucket, MARKER_HEAD + from * MARKER_WIDTH, MARKER_HEAD + to * MARKER_WIDTH - 1)
    local last = 1 + (to - from - 1) * MARKER_WIDTH
    if from > lo and markerCompare(s, 1, a, b, c) < 0 then
      hi, khi = from, struct.unpack('>I4', s, 1)
    elseif to < hi and markerCompare(s, last, a, b, c) > 0 then
      lo, klo = to, struct.unpack('>I4', s, last)
    else
      -- Here if anywhere: a plain search (C), kept only where it starts an entry.
      local at = string.find(s, id, 1, true)
      while at and (at - 1) % MARKER_WIDTH ~= 0 do at = string.find(s, id, at + 1, true) end
      if not at then return nil, true end
      return string.sub(s, at + 10, at + MARKER_WIDTH - 1), true
    end
  end
  return nil, true
end

-- The marker standing in for the record with 16-byte id \`id\`, as scripts answer it (expiresAt
-- in ms, 6 bytes, then the 4-byte fingerprint hash), expired or not; nil when there is none.
-- \`legacy\`: the record's tag bucket of the previous layout.
-- \`present\`: what EXISTS answered for the two buckets, when the caller asked already.
local function markerOf(bucket, legacy, id, present)
  -- One call answers "none" while neither bucket exists (a slot never compacted: most stores).
  present = present or rcall('EXISTS', bucket, legacy)
  if present == 0 then return nil end
  local e, exists = findMarker(bucket, string.sub(id, 1, 10))
  if e then return struct.pack('>I6', struct.unpack('>I4', e) * 1000) .. string.sub(e, 5) end
  if present > (exists and 1 or 0) then
    local old = rcall('HGET', legacy, id)
    if old then return string.sub(old, 1, 10) end
  end
  return nil
end

-- \`body\` (entries only) without the entries expired at \`nowS\`.
local function sweepMarkers(body, nowS)
  local kept, run = {}, nil
  for i = 0, markerCount(MARKER_HEAD + #body) - 1 do
    if struct.unpack('>I4', body, i * MARKER_WIDTH + 11) > nowS then
      run = run or i
    elseif run then
      kept[#kept + 1] = string.sub(body, run * MARKER_WIDTH + 1, i * MARKER_WIDTH)
      run = nil
    end
  end
  if run then kept[#kept + 1] = string.sub(body, run * MARKER_WIDTH + 1) end
  return table.concat(kept)
end

local function entryLess(x, y)
  local a, b, c = struct.unpack('>I4I4I2', x)
  return markerCompare(y, 1, a, b, c) < 0
end

-- Adds \`entries\` (18 bytes each, any order) to \`bucket\`, replacing entries of the same id; at
-- most once a day a write also drops the bucket's expired entries. The bucket is kept until
-- \`keepUntil\` (ms) at least.
local function addMarkers(bucket, entries, now, keepUntil)
  local v = rcall('GET', bucket)
  if v then checkBucketLength(#v) end
  local nextSweep, body = 0, ''
  if v then nextSweep, body = struct.unpack('>I4', v), string.sub(v, MARKER_HEAD + 1) end
  local nowS = math.floor(now / 1000)
  if nowS >= nextSweep then body, nextSweep = sweepMarkers(body, nowS), nowS + 86400 end
  table.sort(entries, entryLess)
  local n, parts, copied, lastId = markerCount(MARKER_HEAD + #body), { struct.pack('>I4', nextSweep) }, 0, nil
  for _, e in ipairs(entries) do
    local id = string.sub(e, 1, 10)
    if id ~= lastId then
      local i, found = markerSearch(body, 1, n, struct.unpack('>I4I4I2', e))
      if i > copied then parts[#parts + 1] = string.sub(body, copied * MARKER_WIDTH + 1, i * MARKER_WIDTH) end
      parts[#parts + 1] = e
      copied = math.max(copied, found and i + 1 or i)
      lastId = id
    end
  end
  if copied < n then parts[#parts + 1] = string.sub(body, copied * MARKER_WIDTH + 1) end
  local at = math.max(rcall('PEXPIRETIME', bucket), keepUntil)
  rcall('SET', bucket, table.concat(parts), 'PXAT', string.format('%d', at))
end

-- Removes the entry of \`id\` (10 bytes) from \`bucket\`; its expiresAt (seconds) if there was one,
-- else 0.
local function removeMarker(bucket, id)
  local v = rcall('GET', bucket)
  if not v or #v <= MARKER_HEAD then return 0 end
  local i, found = markerSearch(v, MARKER_HEAD + 1, markerCount(#v), struct.unpack('>I4I4I2', id))
  if not found then return 0 end
  local at = MARKER_HEAD + i * MARKER_WIDTH
  rcall('SET', bucket, string.sub(v, 1, at) .. string.sub(v, at + MARKER_WIDTH + 1), 'KEEPTTL')
  return struct.unpack('>I4', v, at + 11)
end

local r = loadRecord(KEYS[1])
if r then return { now, recordReply(KEYS[1], r), false } end
return { now, false, markerOf(KEYS[2], KEYS[3], ARGV[1]) or false }
`,
  },
  markPublished: {
    command: 'eoMarkPublished_v2_75a7414c',
    numberOfKeys: 1,
    sha1: '75a7414c0600bedc38b13ef8ddcfef888ce955de',
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

local STATES = { I = true, C = true, F = true }

local function int(n) return string.format('%d', n) end

-- A value at a record's name that this store did not write (written, edited or damaged by hand):
-- the call fails for this key with EOCORRUPT, which the client raises as CorruptRecordError (a
-- batch script answers it for this key alone, see beginMany-n.lua).
local function corrupt(why) error({ err = 'EOCORRUPT ' .. why }) end

-- What \`corrupt\` said, when \`e\` (caught by pcall) is its error; nil for any other error. (Redis
-- 7.0 hands pcall an error table as its text.) A WRONGTYPE is damage too: only a value written by
-- hand at one of the keys a record's call touches (its extras hash, its slot's marker bucket or
-- indexes) has another type than this store gives it.
local function corruption(e)
  if type(e) == 'table' then e = e.err end
  if type(e) ~= 'string' then return nil end
  if string.sub(e, 1, 10) == 'EOCORRUPT ' then return string.sub(e, 11) end
  if string.find(e, 'WRONGTYPE', 1, true) then
    return "a value of another type at one of its keys (its record's extras, its slot's marker bucket or an index, its payload's claim)"
  end
end

-- The outcome of \`pcall\` of one key's work: true and its results, or false and what was damaged
-- (corruption) when it refused the key; any other error is raised again and fails the call.
local function forKey(ok, ...)
  if ok then return true, ... end
  local e = ...
  local why = corruption(e)
  if not why then error(e, 0) end
  return false, why
end

-- The probe key of the slot of record \`rec\` (\`<prefix>:{<tag>}p\`), never written.
local function probeOf(rec) return string.sub(rec, 1, -18) .. 'p' end

-- Stops the script while the slot of record \`rec\` is being migrated between Cluster nodes: a
-- command on several keys of a slot in migration, one of them missing (the probe always is), is
-- refused then (ASK on the node the slot leaves, TRYAGAIN on the one it goes to), and the script
-- fails before writing; the caller's retry comes after the move. A batch script is routed by its
-- first key only: without this, sent on to the importing node, it took the keys that had not moved
-- yet for absent (a COMPLETED key begun as new, a held one completed as lost). Outside a
-- migration it is one EXISTS; on a standalone server nothing migrates.
local function refuseMigrating(rec) rcall('EXISTS', rec, probeOf(rec)) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
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
  local ok, s, n, a, t1, t2, flags, f, t, pos = pcall(struct.unpack, HEAD, v)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  -- The tail is read (or, \`headOnly\`, only checked: a record cut short is refused either way).
  local w, k
  if s == 'I' then
    ok, w, k = pcall(struct.unpack, '>I4c0I4c0', v, pos)
  elseif s == 'C' then
    ok, w = pcall(struct.unpack, '>I4c0', v, pos)
  end
  if not ok then corrupt('a record cut short') end
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = w, k
  elseif s == 'C' then
    r.r = w
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
  -- Only a hash can be one; any other type at the name was put there by something else.
  local kind = rcall('TYPE', rec).ok
  if kind ~= 'hash' then corrupt('a ' .. kind .. ' at the record\\'s name') end
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
  -- That layout always wrote a state and a fence: a hash without them is not a record.
  if not STATES[h.s] or not tonumber(h.n) then corrupt('a hash that is not a record') end
  -- Checked before the DEL below: a script is not rolled back, and a failed HSET after it would
  -- leave the record deleted (its key then begun as new).
  if #extras > 0 then
    local extrasKind = rcall('TYPE', rec .. 'x').ok
    if extrasKind ~= 'hash' and extrasKind ~= 'none' then
      corrupt('a ' .. extrasKind .. ' at the record\\'s extras name')
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s, n = tonumber(h.n), a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
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
    command: 'eoMarkPublishedMany_v2_3facbed5',
    numberOfKeys: undefined,
    sha1: '3facbed5bee1b3d6cbf1cf88e98a7ed3e4e8b339',
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

local STATES = { I = true, C = true, F = true }

local function int(n) return string.format('%d', n) end

-- A value at a record's name that this store did not write (written, edited or damaged by hand):
-- the call fails for this key with EOCORRUPT, which the client raises as CorruptRecordError (a
-- batch script answers it for this key alone, see beginMany-n.lua).
local function corrupt(why) error({ err = 'EOCORRUPT ' .. why }) end

-- What \`corrupt\` said, when \`e\` (caught by pcall) is its error; nil for any other error. (Redis
-- 7.0 hands pcall an error table as its text.) A WRONGTYPE is damage too: only a value written by
-- hand at one of the keys a record's call touches (its extras hash, its slot's marker bucket or
-- indexes) has another type than this store gives it.
local function corruption(e)
  if type(e) == 'table' then e = e.err end
  if type(e) ~= 'string' then return nil end
  if string.sub(e, 1, 10) == 'EOCORRUPT ' then return string.sub(e, 11) end
  if string.find(e, 'WRONGTYPE', 1, true) then
    return "a value of another type at one of its keys (its record's extras, its slot's marker bucket or an index, its payload's claim)"
  end
end

-- The outcome of \`pcall\` of one key's work: true and its results, or false and what was damaged
-- (corruption) when it refused the key; any other error is raised again and fails the call.
local function forKey(ok, ...)
  if ok then return true, ... end
  local e = ...
  local why = corruption(e)
  if not why then error(e, 0) end
  return false, why
end

-- The probe key of the slot of record \`rec\` (\`<prefix>:{<tag>}p\`), never written.
local function probeOf(rec) return string.sub(rec, 1, -18) .. 'p' end

-- Stops the script while the slot of record \`rec\` is being migrated between Cluster nodes: a
-- command on several keys of a slot in migration, one of them missing (the probe always is), is
-- refused then (ASK on the node the slot leaves, TRYAGAIN on the one it goes to), and the script
-- fails before writing; the caller's retry comes after the move. A batch script is routed by its
-- first key only: without this, sent on to the importing node, it took the keys that had not moved
-- yet for absent (a COMPLETED key begun as new, a held one completed as lost). Outside a
-- migration it is one EXISTS; on a standalone server nothing migrates.
local function refuseMigrating(rec) rcall('EXISTS', rec, probeOf(rec)) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
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
  local ok, s, n, a, t1, t2, flags, f, t, pos = pcall(struct.unpack, HEAD, v)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  -- The tail is read (or, \`headOnly\`, only checked: a record cut short is refused either way).
  local w, k
  if s == 'I' then
    ok, w, k = pcall(struct.unpack, '>I4c0I4c0', v, pos)
  elseif s == 'C' then
    ok, w = pcall(struct.unpack, '>I4c0', v, pos)
  end
  if not ok then corrupt('a record cut short') end
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = w, k
  elseif s == 'C' then
    r.r = w
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
  -- Only a hash can be one; any other type at the name was put there by something else.
  local kind = rcall('TYPE', rec).ok
  if kind ~= 'hash' then corrupt('a ' .. kind .. ' at the record\\'s name') end
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
  -- That layout always wrote a state and a fence: a hash without them is not a record.
  if not STATES[h.s] or not tonumber(h.n) then corrupt('a hash that is not a record') end
  -- Checked before the DEL below: a script is not rolled back, and a failed HSET after it would
  -- leave the record deleted (its key then begun as new).
  if #extras > 0 then
    local extrasKind = rcall('TYPE', rec .. 'x').ok
    if extrasKind ~= 'hash' and extrasKind ~= 'none' then
      corrupt('a ' .. extrasKind .. ' at the record\\'s extras name')
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s, n = tonumber(h.n), a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
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
  if n > 0 then
    local intact, newly = forKey(pcall(markPublishedOne, rec, fence, wanted, now))
    -- A damaged record has nothing to flag; the others of the batch are flagged.
    if not intact then newly = 0 end
    flagged = flagged + newly
  end
end
return flagged
`,
  },
  markStepStarted: {
    command: 'eoMarkStepStarted_v2_3f627a8e',
    numberOfKeys: 1,
    sha1: '3f627a8ea02734a90f77c30c67a27afa1115fc04',
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

local STATES = { I = true, C = true, F = true }

local function int(n) return string.format('%d', n) end

-- A value at a record's name that this store did not write (written, edited or damaged by hand):
-- the call fails for this key with EOCORRUPT, which the client raises as CorruptRecordError (a
-- batch script answers it for this key alone, see beginMany-n.lua).
local function corrupt(why) error({ err = 'EOCORRUPT ' .. why }) end

-- What \`corrupt\` said, when \`e\` (caught by pcall) is its error; nil for any other error. (Redis
-- 7.0 hands pcall an error table as its text.) A WRONGTYPE is damage too: only a value written by
-- hand at one of the keys a record's call touches (its extras hash, its slot's marker bucket or
-- indexes) has another type than this store gives it.
local function corruption(e)
  if type(e) == 'table' then e = e.err end
  if type(e) ~= 'string' then return nil end
  if string.sub(e, 1, 10) == 'EOCORRUPT ' then return string.sub(e, 11) end
  if string.find(e, 'WRONGTYPE', 1, true) then
    return "a value of another type at one of its keys (its record's extras, its slot's marker bucket or an index, its payload's claim)"
  end
end

-- The outcome of \`pcall\` of one key's work: true and its results, or false and what was damaged
-- (corruption) when it refused the key; any other error is raised again and fails the call.
local function forKey(ok, ...)
  if ok then return true, ... end
  local e = ...
  local why = corruption(e)
  if not why then error(e, 0) end
  return false, why
end

-- The probe key of the slot of record \`rec\` (\`<prefix>:{<tag>}p\`), never written.
local function probeOf(rec) return string.sub(rec, 1, -18) .. 'p' end

-- Stops the script while the slot of record \`rec\` is being migrated between Cluster nodes: a
-- command on several keys of a slot in migration, one of them missing (the probe always is), is
-- refused then (ASK on the node the slot leaves, TRYAGAIN on the one it goes to), and the script
-- fails before writing; the caller's retry comes after the move. A batch script is routed by its
-- first key only: without this, sent on to the importing node, it took the keys that had not moved
-- yet for absent (a COMPLETED key begun as new, a held one completed as lost). Outside a
-- migration it is one EXISTS; on a standalone server nothing migrates.
local function refuseMigrating(rec) rcall('EXISTS', rec, probeOf(rec)) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
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
  local ok, s, n, a, t1, t2, flags, f, t, pos = pcall(struct.unpack, HEAD, v)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  -- The tail is read (or, \`headOnly\`, only checked: a record cut short is refused either way).
  local w, k
  if s == 'I' then
    ok, w, k = pcall(struct.unpack, '>I4c0I4c0', v, pos)
  elseif s == 'C' then
    ok, w = pcall(struct.unpack, '>I4c0', v, pos)
  end
  if not ok then corrupt('a record cut short') end
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = w, k
  elseif s == 'C' then
    r.r = w
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
  -- Only a hash can be one; any other type at the name was put there by something else.
  local kind = rcall('TYPE', rec).ok
  if kind ~= 'hash' then corrupt('a ' .. kind .. ' at the record\\'s name') end
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
  -- That layout always wrote a state and a fence: a hash without them is not a record.
  if not STATES[h.s] or not tonumber(h.n) then corrupt('a hash that is not a record') end
  -- Checked before the DEL below: a script is not rolled back, and a failed HSET after it would
  -- leave the record deleted (its key then begun as new).
  if #extras > 0 then
    local extrasKind = rcall('TYPE', rec .. 'x').ok
    if extrasKind ~= 'hash' and extrasKind ~= 'none' then
      corrupt('a ' .. extrasKind .. ' at the record\\'s extras name')
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s, n = tonumber(h.n), a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
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
    command: 'eoRelease_v2_d90e1337',
    numberOfKeys: 1,
    sha1: 'd90e1337121e17307a8f05fdc795f549a58e0ee8',
    lua: `--[[
release: give the lease up after a retryable error; the next begin acquires at once (retry).

KEYS[1]  record
ARGV[1]  fence
ARGV[2]  error (encoded)
ARGV[3]  safety TTL of an IN_PROGRESS record past its lease end (ms)
ARGV[4]  '1': the handler never ran under this lease (given back before its turn): the attempt
         is not counted (the next begin adds it again) and the last error stays; ARGV[2] unused.
         '2': the same for a lease acquired as a takeover, which the key stays: its lease end is
         set in the past but not 0, so the next begin answers takeover, not retry

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

local STATES = { I = true, C = true, F = true }

local function int(n) return string.format('%d', n) end

-- A value at a record's name that this store did not write (written, edited or damaged by hand):
-- the call fails for this key with EOCORRUPT, which the client raises as CorruptRecordError (a
-- batch script answers it for this key alone, see beginMany-n.lua).
local function corrupt(why) error({ err = 'EOCORRUPT ' .. why }) end

-- What \`corrupt\` said, when \`e\` (caught by pcall) is its error; nil for any other error. (Redis
-- 7.0 hands pcall an error table as its text.) A WRONGTYPE is damage too: only a value written by
-- hand at one of the keys a record's call touches (its extras hash, its slot's marker bucket or
-- indexes) has another type than this store gives it.
local function corruption(e)
  if type(e) == 'table' then e = e.err end
  if type(e) ~= 'string' then return nil end
  if string.sub(e, 1, 10) == 'EOCORRUPT ' then return string.sub(e, 11) end
  if string.find(e, 'WRONGTYPE', 1, true) then
    return "a value of another type at one of its keys (its record's extras, its slot's marker bucket or an index, its payload's claim)"
  end
end

-- The outcome of \`pcall\` of one key's work: true and its results, or false and what was damaged
-- (corruption) when it refused the key; any other error is raised again and fails the call.
local function forKey(ok, ...)
  if ok then return true, ... end
  local e = ...
  local why = corruption(e)
  if not why then error(e, 0) end
  return false, why
end

-- The probe key of the slot of record \`rec\` (\`<prefix>:{<tag>}p\`), never written.
local function probeOf(rec) return string.sub(rec, 1, -18) .. 'p' end

-- Stops the script while the slot of record \`rec\` is being migrated between Cluster nodes: a
-- command on several keys of a slot in migration, one of them missing (the probe always is), is
-- refused then (ASK on the node the slot leaves, TRYAGAIN on the one it goes to), and the script
-- fails before writing; the caller's retry comes after the move. A batch script is routed by its
-- first key only: without this, sent on to the importing node, it took the keys that had not moved
-- yet for absent (a COMPLETED key begun as new, a held one completed as lost). Outside a
-- migration it is one EXISTS; on a standalone server nothing migrates.
local function refuseMigrating(rec) rcall('EXISTS', rec, probeOf(rec)) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
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
  local ok, s, n, a, t1, t2, flags, f, t, pos = pcall(struct.unpack, HEAD, v)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  -- The tail is read (or, \`headOnly\`, only checked: a record cut short is refused either way).
  local w, k
  if s == 'I' then
    ok, w, k = pcall(struct.unpack, '>I4c0I4c0', v, pos)
  elseif s == 'C' then
    ok, w = pcall(struct.unpack, '>I4c0', v, pos)
  end
  if not ok then corrupt('a record cut short') end
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = w, k
  elseif s == 'C' then
    r.r = w
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
  -- Only a hash can be one; any other type at the name was put there by something else.
  local kind = rcall('TYPE', rec).ok
  if kind ~= 'hash' then corrupt('a ' .. kind .. ' at the record\\'s name') end
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
  -- That layout always wrote a state and a fence: a hash without them is not a record.
  if not STATES[h.s] or not tonumber(h.n) then corrupt('a hash that is not a record') end
  -- Checked before the DEL below: a script is not rolled back, and a failed HSET after it would
  -- leave the record deleted (its key then begun as new).
  if #extras > 0 then
    local extrasKind = rcall('TYPE', rec .. 'x').ok
    if extrasKind ~= 'hash' and extrasKind ~= 'none' then
      corrupt('a ' .. extrasKind .. ' at the record\\'s extras name')
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s, n = tonumber(h.n), a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
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
-- Steps stay: the retry continues where this attempt stopped.
r.t1 = 0
if ARGV[4] == '0' then
  rcall('HSET', rec .. 'x', 'e', ARGV[2])
  r.flags = 1
else
  r.a = math.max(r.a - 1, 0)
  if ARGV[4] == '2' then r.t1 = 1 end
end
saveRecord(rec, r, now + tonumber(ARGV[3]))
return 1
`,
  },
  releaseFingerprint: {
    command: 'eoReleaseFingerprint_v2_c8446b95',
    numberOfKeys: 1,
    sha1: 'c8446b9507131830084f4bb0a0fa1f388960b17d',
    lua: `--[[
releaseFingerprint: delete the payload guard's claim if the given key holds it.

KEYS[1]  the claim (see fingerprintClaimKey)
ARGV[1]  the key that must hold it

Compare and delete in one step: a claim another key took after this one's lapsed is kept.

Returns:
  1  deleted
  0  absent, or held by another key
]]
local rcall = redis.call
if rcall('GET', KEYS[1]) == ARGV[1] then return rcall('DEL', KEYS[1]) end
return 0
`,
  },
  saveStep: {
    command: 'eoSaveStep_v2_70ab957b',
    numberOfKeys: 1,
    sha1: '70ab957bc02bf85ed8645eb67e2335ac7d87d159',
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

local STATES = { I = true, C = true, F = true }

local function int(n) return string.format('%d', n) end

-- A value at a record's name that this store did not write (written, edited or damaged by hand):
-- the call fails for this key with EOCORRUPT, which the client raises as CorruptRecordError (a
-- batch script answers it for this key alone, see beginMany-n.lua).
local function corrupt(why) error({ err = 'EOCORRUPT ' .. why }) end

-- What \`corrupt\` said, when \`e\` (caught by pcall) is its error; nil for any other error. (Redis
-- 7.0 hands pcall an error table as its text.) A WRONGTYPE is damage too: only a value written by
-- hand at one of the keys a record's call touches (its extras hash, its slot's marker bucket or
-- indexes) has another type than this store gives it.
local function corruption(e)
  if type(e) == 'table' then e = e.err end
  if type(e) ~= 'string' then return nil end
  if string.sub(e, 1, 10) == 'EOCORRUPT ' then return string.sub(e, 11) end
  if string.find(e, 'WRONGTYPE', 1, true) then
    return "a value of another type at one of its keys (its record's extras, its slot's marker bucket or an index, its payload's claim)"
  end
end

-- The outcome of \`pcall\` of one key's work: true and its results, or false and what was damaged
-- (corruption) when it refused the key; any other error is raised again and fails the call.
local function forKey(ok, ...)
  if ok then return true, ... end
  local e = ...
  local why = corruption(e)
  if not why then error(e, 0) end
  return false, why
end

-- The probe key of the slot of record \`rec\` (\`<prefix>:{<tag>}p\`), never written.
local function probeOf(rec) return string.sub(rec, 1, -18) .. 'p' end

-- Stops the script while the slot of record \`rec\` is being migrated between Cluster nodes: a
-- command on several keys of a slot in migration, one of them missing (the probe always is), is
-- refused then (ASK on the node the slot leaves, TRYAGAIN on the one it goes to), and the script
-- fails before writing; the caller's retry comes after the move. A batch script is routed by its
-- first key only: without this, sent on to the importing node, it took the keys that had not moved
-- yet for absent (a COMPLETED key begun as new, a held one completed as lost). Outside a
-- migration it is one EXISTS; on a standalone server nothing migrates.
local function refuseMigrating(rec) rcall('EXISTS', rec, probeOf(rec)) end

-- int() of an expiry time: the keys of a batch mostly share one, so the last text is kept.
local lastAt, lastAtText
local function intAt(at)
  if at ~= lastAt then lastAt, lastAtText = at, int(at) end
  return lastAtText
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
  local ok, s, n, a, t1, t2, flags, f, t, pos = pcall(struct.unpack, HEAD, v)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  -- The tail is read (or, \`headOnly\`, only checked: a record cut short is refused either way).
  local w, k
  if s == 'I' then
    ok, w, k = pcall(struct.unpack, '>I4c0I4c0', v, pos)
  elseif s == 'C' then
    ok, w = pcall(struct.unpack, '>I4c0', v, pos)
  end
  if not ok then corrupt('a record cut short') end
  if headOnly then return r end
  if s == 'I' then
    r.w, r.k = w, k
  elseif s == 'C' then
    r.r = w
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
  -- Only a hash can be one; any other type at the name was put there by something else.
  local kind = rcall('TYPE', rec).ok
  if kind ~= 'hash' then corrupt('a ' .. kind .. ' at the record\\'s name') end
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
  -- That layout always wrote a state and a fence: a hash without them is not a record.
  if not STATES[h.s] or not tonumber(h.n) then corrupt('a hash that is not a record') end
  -- Checked before the DEL below: a script is not rolled back, and a failed HSET after it would
  -- leave the record deleted (its key then begun as new).
  if #extras > 0 then
    local extrasKind = rcall('TYPE', rec .. 'x').ok
    if extrasKind ~= 'hash' and extrasKind ~= 'none' then
      corrupt('a ' .. extrasKind .. ' at the record\\'s extras name')
    end
  end
  local at = rcall('PEXPIRETIME', rec)
  rcall('DEL', rec)
  local r = { s = h.s, n = tonumber(h.n), a = tonumber(h.a) or 0, f = h.f or '', t = h.t or '',
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
