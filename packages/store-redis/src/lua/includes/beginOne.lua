-- beginOne: the begin transition of one key (see begin-2.lua for the codes). `full` asks for the
-- whole record hash with a busy answer; batches answer busy with the lease end only.
-- Returns code, payload: 'N' { fence, leaseUntil }; 'R'/'T' the record hash after the write;
-- 'B' the record hash, or { leaseUntil } when not `full`; 'D'/'F'/'M' the record hash;
-- 'K'/'X' the compaction marker.
-- `name` is the store key itself: kept in 'k' with the attempt's start time 'b' while the record is
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
