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

-- What `corrupt` said, when `e` (caught by pcall) is its error; nil for any other error. (Redis
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

-- The outcome of `pcall` of one key's work: true and its results, or false and what was damaged
-- (corruption) when it refused the key; any other error is raised again and fails the call.
local function forKey(ok, ...)
  if ok then return true, ... end
  local e = ...
  local why = corruption(e)
  if not why then error(e, 0) end
  return false, why
end

-- The probe key of the slot of record `rec` (`<prefix>:{<tag>}p`), never written.
local function probeOf(rec) return string.sub(rec, 1, -18) .. 'p' end

-- Stops the script while the slot of record `rec` is being migrated between Cluster nodes: a
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

-- `headOnly`: without the owner, the store key and the result (a caller that replaces the
-- record whole and answers no record needs none of them).
local function unpackRecord(v, headOnly)
  local ok, s, n, a, t1, t2, flags, f, t, pos = pcall(struct.unpack, HEAD, v)
  if not ok or not STATES[s] then corrupt('a value that is not a record') end
  local r = { s = s, n = n, a = a, t1 = t1, t2 = t2, flags = flags, f = f, t = t }
  -- The tail is read (or, `headOnly`, only checked: a record cut short is refused either way).
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
  if kind ~= 'hash' then corrupt('a ' .. kind .. ' at the record\'s name') end
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
      corrupt('a ' .. extrasKind .. ' at the record\'s extras name')
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

-- The packed record stored at `rec`, or nil; a record of the previous layout is converted first.
local function loadPacked(rec)
  local v = redis.pcall('GET', rec)
  if type(v) == 'table' then
    if v.err and string.find(v.err, 'WRONGTYPE', 1, true) then return packRecord(convertLegacy(rec)) end
    error(v.err)
  end
  if not v then return nil end
  return v
end

-- The record stored at `rec`, or nil (see unpackRecord for `headOnly`).
local function loadRecord(rec, headOnly)
  local v = loadPacked(rec)
  if not v then return nil end
  return unpackRecord(v, headOnly)
end

-- Writes `r` whole, expiring at `at` (ms), its extras hash with it.
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

-- The extras hash of `r`, flagged on the record (same expiry) when it had none.
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
-- `packed`: the record as stored, when `r` is unchanged (no need to pack it again).
local function recordReply(rec, r, packed)
  local extras = {}
  if r.flags == 1 then extras = rcall('HGETALL', rec .. 'x') end
  return { packed or packRecord(r), extras }
end
