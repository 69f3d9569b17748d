--[[
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

A new record's fence is max(server now in ms, previous fence + 1); takeover and retry add 1.

Returns { code, server now (ms), payload }:
  'N'  acquired, kind new       payload = record hash after the write (HGETALL)
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
local rec, bucket = KEYS[1], KEYS[2]
local fp, owner, lease, trace, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local function int(n) return string.format('%d', n) end

local h = rcall('HMGET', rec, 's', 'f', 'n', 'a', 'l', 'x')
local state = h[1]
-- COMPLETED and FAILED records are logically gone at their expiry, though still stored for a grace.
local live = state == 'I' or (state and tonumber(h[6]) > now)

if live then
  -- A different payload under the same key is reported whatever the state.
  if h[2] ~= fp then return { 'M', now, rcall('HGETALL', rec) } end
  if state == 'C' then return { 'D', now, rcall('HGETALL', rec) } end
  if state == 'F' then return { 'F', now, rcall('HGETALL', rec) } end
  local leaseUntil = tonumber(h[5])
  if leaseUntil > now then return { 'B', now, rcall('HGETALL', rec) } end
  -- leaseUntil 0 means released after a retryable error; any other past value, a lapsed holder.
  local code = 'T'
  if leaseUntil == 0 then code = 'R' end
  leaseUntil = now + lease
  rcall('HSET', rec, 'n', int(tonumber(h[3]) + 1), 'a', int(tonumber(h[4]) + 1), 'w', owner,
    'l', int(leaseUntil))
  if trace == '' then rcall('HDEL', rec, 't') else rcall('HSET', rec, 't', trace) end
  rcall('PEXPIREAT', rec, int(leaseUntil + ttl))
  return { code, now, rcall('HGETALL', rec) }
end

-- Fences of new records start at the server clock, so they do not repeat even after the old
-- record is gone; an expired record still stored also guards against a clock stepping back.
local fence = now
if state then
  fence = math.max(now, tonumber(h[3]) + 1)
else
  -- No record: a compacted one may still answer "already processed".
  local marker = rcall('HGET', bucket, ARGV[6])
  if marker then
    if struct.unpack('>I6', marker) > now then
      if string.sub(marker, 7) ~= ARGV[7] then return { 'X', now, marker } end
      return { 'K', now, marker }
    end
    rcall('HDEL', bucket, ARGV[6])
  end
end

local leaseUntil = now + lease
rcall('DEL', rec)
rcall('HSET', rec, 's', 'I', 'f', fp, 'n', int(fence), 'a', '1', 'w', owner, 'l', int(leaseUntil))
if trace ~= '' then rcall('HSET', rec, 't', trace) end
rcall('PEXPIREAT', rec, int(leaseUntil + ttl))
return { 'N', now, rcall('HGETALL', rec) }
