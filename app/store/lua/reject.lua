-- Remove a cache entry a reader rejected (it did not decrypt, parse or validate), but only if
-- it is still exactly the entry that was read: a token saved meanwhile stays.
-- KEYS[1] token hash; ARGV[1] entry_id as load.lua returned it
-- Returns 1 when removed, 0 when the entry changed or is gone
local kind = redis.call('TYPE', KEYS[1]).ok
local id = false
if kind == 'hash' then
  local entry = redis.call('HMGET', KEYS[1], 'sealed', 'digest', 'expires_at')
  -- the same digest as in load.lua
  id = redis.sha1hex(kind .. '\n' .. (entry[1] or '-') .. '\n' .. (entry[2] or '-') .. '\n' .. (entry[3] or '-'))
elseif kind ~= 'none' then
  id = redis.sha1hex(kind)
end
if id and id == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
