-- beginOne: the begin transition of one key (see begin-2.lua for the codes). `full` asks for the
-- whole record with a busy answer; batches answer busy with the lease end only.
-- Returns code, payload: 'N' the fence (its lease ends at now + lease); 'R'/'T' the record after the write;
-- 'B' the record, or { leaseUntil } when not `full`; 'D'/'F'/'M' the record ({ packed, extras });
-- 'K'/'X' the compaction marker.
-- `name` is the store key itself: kept with the attempt's start time while the record is
-- IN_PROGRESS (complete and fail write records without them), for listInProgress.
-- `bucket`/`legacy`: where a compacted record's marker is (see markerOf), `id` its 16-byte id.
-- `deadline`: the server time (ms) after which the caller has given up waiting (0 = never).
-- `cluster`: true on a Cluster (the probe of refuseMigrating goes with the first read).
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
