-- Compaction markers (see layout.ts): one string per cluster slot, shared by the tags of that slot.
-- A 4-byte header (the next sweep of expired entries, in seconds) and then fixed-width entries
-- sorted by id:
--
--   id 10 bytes (the first 10 of the record's 16-byte id) | expiresAt 4 (seconds, rounded up) |
--   fingerprint hash 4 (markerFingerprint)
--
-- 18 bytes a marker, with no per-entry structure: the only overhead is the bucket's key, shared
-- by ~n/13,152 markers. Markers of the previous layout (a hash per tag, `<prefix>:{<tag>}m`:
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

-- How many entries a bucket string (with its header) of `bytes` bytes holds.
local function markerCount(bytes)
  return math.floor((bytes - MARKER_HEAD) / MARKER_WIDTH)
end

-- -1, 0 or 1: the id (a, b, c: its 4, 4 and 2 bytes) against the entry at `pos` of `s`. Numbers,
-- not strings: Lua compares strings with strcoll, which depends on the server's locale.
local function markerCompare(s, pos, a, b, c)
  local ea, eb, ec = struct.unpack('>I4I4I2', s, pos)
  if a ~= ea then return a < ea and -1 or 1 end
  if b ~= eb then return b < eb and -1 or 1 end
  if c ~= ec then return c < ec and -1 or 1 end
  return 0
end

-- Binary search of the `n` entries of `s` starting at `base`: the index (0-based) of the id and
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

-- The entry of `id` (10 bytes) in `bucket` without its id (expiresAt, fingerprint hash), or nil;
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

-- The marker standing in for the record with 16-byte id `id`, as scripts answer it (expiresAt
-- in ms, 6 bytes, then the 4-byte fingerprint hash), expired or not; nil when there is none.
-- `legacy`: the record's tag bucket of the previous layout.
-- `present`: what EXISTS answered for the two buckets, when the caller asked already.
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

-- `body` (entries only) without the entries expired at `nowS`.
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

-- Adds `entries` (18 bytes each, any order) to `bucket`, replacing entries of the same id; at
-- most once a day a write also drops the bucket's expired entries. The bucket is kept until
-- `keepUntil` (ms) at least.
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

-- Removes the entry of `id` (10 bytes) from `bucket`; its expiresAt (seconds) if there was one,
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
