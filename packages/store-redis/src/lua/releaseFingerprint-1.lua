--[[
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
