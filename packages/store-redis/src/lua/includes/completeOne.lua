-- completeOne: IN_PROGRESS(fence) -> COMPLETED of one key (see complete-2.lua). Its outgoing
-- messages are ARGV[first], ARGV[first + 1], ... : `count` pairs of id, message.
-- Returns 1 (ok) or 0 (lost).
-- A blob result's pointer goes into `blobs` (the tag's blob index: member = packed pointer, score
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
