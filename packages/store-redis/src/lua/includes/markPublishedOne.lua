-- markPublishedOne: flags the messages of a live COMPLETED record, completed under `fence`, whose
-- ids are keys of `wanted` as published. Returns how many were newly flagged.
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
