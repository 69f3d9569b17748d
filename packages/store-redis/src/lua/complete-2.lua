--[[
complete: IN_PROGRESS(fence) -> COMPLETED with result and outgoing messages, in one write.

KEYS[1]  record hash
KEYS[2]  completion index of the key's hash tag (sorted set member -> completedAt)
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
local rec, index = KEYS[1], KEYS[2]
local function int(n) return string.format('%d', n) end

local h = rcall('HMGET', rec, 's', 'n', 'f', 'a', 't')
if h[1] ~= 'I' or h[2] ~= ARGV[1] then return 0 end
local expiresAt = now + tonumber(ARGV[2])
local physicalEnd = int(expiresAt + tonumber(ARGV[3]))
local trace = ARGV[4]
if trace == '' then trace = h[5] end

local fields = { 's', 'C', 'f', h[3], 'n', h[2], 'a', h[4], 'c', int(now), 'x', int(expiresAt) }
if trace then
  fields[#fields + 1] = 't'
  fields[#fields + 1] = trace
end
if ARGV[5] ~= '' then
  fields[#fields + 1] = 'r'
  fields[#fields + 1] = ARGV[5]
end
rcall('DEL', rec)
rcall('HSET', rec, unpack(fields))

local count = (#ARGV - 6) / 2
if count > 0 then
  rcall('HSET', rec, 'm', int(count))
  -- In chunks: unpack() of thousands of values would overflow Lua's C stack.
  local chunk = {}
  for i = 1, count do
    chunk[#chunk + 1] = 'd' .. i
    chunk[#chunk + 1] = ARGV[5 + 2 * i]
    chunk[#chunk + 1] = 'o' .. i
    chunk[#chunk + 1] = ARGV[6 + 2 * i]
    if #chunk >= 400 or i == count then
      rcall('HSET', rec, unpack(chunk))
      chunk = {}
    end
  end
end
rcall('PEXPIREAT', rec, physicalEnd)

if ARGV[6] ~= '' then
  rcall('ZADD', index, int(now), ARGV[6])
  -- The index lives as long as its newest record; compaction prunes it meanwhile.
  local ttl = rcall('PTTL', index)
  if ttl < 0 or now + ttl < tonumber(physicalEnd) then rcall('PEXPIREAT', index, physicalEnd) end
end
return 1
