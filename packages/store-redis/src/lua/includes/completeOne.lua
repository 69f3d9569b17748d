-- Adds `id` to a tag's completion index, which lives as long as its newest record (compaction
-- prunes it meanwhile).
local function indexCompletion(index, id, now, physicalEnd)
  rcall('ZADD', index, int(now), id)
  local ttl = rcall('PTTL', index)
  if ttl < 0 or now + ttl < physicalEnd then rcall('PEXPIREAT', index, int(physicalEnd)) end
end

-- completeOne: IN_PROGRESS(fence) -> COMPLETED of one key (see completeMany-n.lua). `messages` holds
-- its outgoing messages as id, message, id, message, ...; `fence` is a number.
-- Returns 1 (ok) or 0 (lost). A record already COMPLETED under `fence` answers 1 and is left as it
-- is: the caller's earlier complete landed and its answer was lost (only the holder of a fence
-- completes with it).
-- `tag` is the record's name without its id (`<prefix>:{<tag>}`): the tag's completion index is
-- tag .. 'i', its blob index tag .. 'b'.
-- A blob result's pointer goes into the blob index (member = packed pointer, score = the record's
-- physical end), so collectBlobs can delete the blob once no record names it; not with
-- `indexBlob` false (a store whose blobs another store's collection deletes). `cluster`: see
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
