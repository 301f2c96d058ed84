-- Read one client's cache entry and hold in one round trip, as text this adapter can trust to
-- decode: each field of the entry is returned only if it is short printable ASCII of the
-- characters a sealed entry uses (anything else comes back as false, and the reader rejects it).
-- KEYS[1] token hash (fields sealed, digest, expires_at; see app/store/sealing.py)
-- KEYS[2] hold string (value: reason; expires by itself)
-- Returns {sealed|false, digest|false, expires_at|false, entry_id|false, now, hold_reason|false,
-- hold_pttl}: entry_id names exactly what was read (false: no entry), for reject.lua; now is
-- Redis' clock (unix seconds, text); hold_reason is only ever 'rejected' or 'unavailable'
local function text(v)
  if v and #v <= 65536 and not string.find(v, '[^%w%+/=_%.%-]') then return v end
  return false
end
local kind = redis.call('TYPE', KEYS[1]).ok
local entry = {false, false, false}
local id = false
if kind == 'hash' then
  entry = redis.call('HMGET', KEYS[1], 'sealed', 'digest', 'expires_at')
  -- the same digest as in reject.lua
  id = redis.sha1hex(kind .. '\n' .. (entry[1] or '-') .. '\n' .. (entry[2] or '-') .. '\n' .. (entry[3] or '-'))
elseif kind ~= 'none' then
  id = redis.sha1hex(kind)
end
local reason, pttl = false, -2
if redis.call('TYPE', KEYS[2]).ok == 'string' then
  reason = redis.call('GET', KEYS[2])
  if reason ~= 'rejected' and reason ~= 'unavailable' then reason = false end
  if reason then pttl = redis.call('PTTL', KEYS[2]) end
end
local t = redis.call('TIME')
local now = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
return {text(entry[1]), text(entry[2]), text(entry[3]), id, now, reason, pttl}
