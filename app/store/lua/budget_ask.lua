-- Ask for one upstream permit: granted now, queued fairly with a predicted delay, or denied.
-- The same algorithm as app/budget/fair.py (FairWindow), on Redis time. A permit is only ever
-- granted at "now" and only while the window holds fewer than its limit, so the sliding-window
-- invariant, the cooldown and the failover fence stay exact. Waiters are served token requests
-- first (FIFO), then API requests by weighted-fair virtual finish tag (ties by id); a waiter
-- is granted when fewer of the requests queued ahead of it are due than slots are free. Each
-- waiter holds a lease (its predicted delay + grace) and is dropped when it lapses. Only the
-- requests ahead that are due (their predicted slot has come) hold a free slot: one that nobody
-- due claims goes to whoever asks (work-conserving). While API requests of two or more callers
-- are queued, API grants are paced one per window / limit on a schedule (KEYS[8] pace: the
-- next paced slot, advanced one spacing per paced grant, catching up at most half a spacing),
-- or a window filled in a burst would free its slots in a burst.
-- Failover fence: the epoch key names the Redis process (run_id) that counted the window. When
-- this process is another one (a promoted replica, a restart that reloaded the keys) or the
-- window vanished under an instance that saw it, grants counted by the previous process may be
-- lost (replication is asynchronous), so the fleet grants nothing for one window + grace.
-- KEYS[1] grants zset (member: "caller id", score: ms of Redis time), KEYS[2] cooldown string,
-- KEYS[3] epoch string, KEYS[4] token queue zset (id -> arrival number), KEYS[5] API queue zset
-- (id -> tag), KEYS[6] leases zset (id -> ms), KEYS[7] waiters hash (id -> "t caller" or
-- "a caller"), KEYS[8] state hash (v: virtual time, seq, pace, tag:CALLER, n:CALLER)
-- ARGV[1] limit, ARGV[2] window + safety margin in ms, ARGV[3] token reserve, ARGV[4] longest
-- wait in ms, ARGV[5] request id, ARGV[6] caller, ARGV[7] tag cost, ARGV[8] '1' for a token
-- request, ARGV[9] failover fence in ms, ARGV[10] the epoch the caller saw within the last
-- window or '', ARGV[11] return fence in ms (the caller granted alone meanwhile; 0: none),
-- ARGV[12] snapshot: the most grants to list (0: none), ARGV[13] lease grace in ms
-- Returns {outcome 1 granted | 0 waiting | -1 denied, delay_ms, remaining, reset_ms, epoch,
-- fenced 0|1 [, listed 0|1, age_ms...]}: delay is when to ask again (waiting) or when a permit
-- would come (denied); the ages are those of the grants in the window, when listed
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local api_limit = limit - tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local id, caller, cost = ARGV[5], ARGV[6], tonumber(ARGV[7])
local token = ARGV[8] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local epoch = redis.call('GET', KEYS[3])
local fenced = 0
if epoch ~= run_id then
  if epoch or ARGV[10] ~= '' then
    if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[9]) then
      redis.call('SET', KEYS[2], 'fence', 'PX', ARGV[9])
    end
    fenced = 1
  end
  redis.call('SET', KEYS[3], run_id, 'PX', window + 1000)
end
-- The epoch stays a window after any caller saw it.
redis.call('PEXPIRE', KEYS[3], window + 1000)
local back = tonumber(ARGV[11])
if back > 0 and redis.call('PTTL', KEYS[2]) < back then
  redis.call('SET', KEYS[2], 'fence', 'PX', back)
end

local function fmt(x) return string.format('%.0f', x) end

local function remove(w, granted, restore)
  local kind = redis.call('HGET', KEYS[7], w)
  if not kind then return end
  local who = string.sub(kind, 3)
  local queue = KEYS[5]
  if string.sub(kind, 1, 1) == 't' then queue = KEYS[4] end
  local tag = tonumber(redis.call('ZSCORE', queue, w))
  if granted and queue == KEYS[5] and redis.call('ZRANK', queue, w) == 0 then
    if tag > tonumber(redis.call('HGET', KEYS[8], 'v') or '0') then
      redis.call('HSET', KEYS[8], 'v', fmt(tag))
    end
  end
  redis.call('ZREM', queue, w)
  redis.call('ZREM', KEYS[6], w)
  redis.call('HDEL', KEYS[7], w)
  if redis.call('HINCRBY', KEYS[8], 'n:' .. who, -1) <= 0 then
    redis.call('HDEL', KEYS[8], 'n:' .. who, 'tag:' .. who)
  elseif restore and redis.call('HGET', KEYS[8], 'tag:' .. who) == fmt(tag) then
    redis.call('HSET', KEYS[8], 'tag:' .. who, restore)
  end
  if redis.call('HLEN', KEYS[7]) == 0 then  -- nothing waits: virtual time starts again
    redis.call('DEL', KEYS[8])
  end
end

local function add()
  if token then
    redis.call('ZADD', KEYS[4], redis.call('HINCRBY', KEYS[8], 'seq', 1), id)
    redis.call('HSET', KEYS[7], id, 't ' .. caller)
  else
    local v = tonumber(redis.call('HGET', KEYS[8], 'v') or '0')
    local last = tonumber(redis.call('HGET', KEYS[8], 'tag:' .. caller) or '0')
    local tag = math.max(v, last) + cost
    redis.call('ZADD', KEYS[5], fmt(tag), id)
    redis.call('HSET', KEYS[8], 'tag:' .. caller, fmt(tag))
    redis.call('HSET', KEYS[7], id, 'a ' .. caller)
  end
  redis.call('HINCRBY', KEYS[8], 'n:' .. caller, 1)
  redis.call('ZADD', KEYS[6], now, id)
end

local function reply(outcome, delay, remaining, reset)
  local out = {outcome, delay, remaining, reset, run_id, fenced}
  local most = tonumber(ARGV[12])
  if most > 0 then
    out[7] = 0
    if redis.call('ZCARD', KEYS[1]) <= most then
      out[7] = 1
      local raw = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
      for i = 2, #raw, 2 do out[#out + 1] = now - tonumber(raw[i]) end
    end
  end
  return out
end

-- Grants before now - window can no longer share a (closed) window with now.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - window))
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', '(' .. now)) do
  remove(w, false, nil)
end

local registered = redis.call('HEXISTS', KEYS[7], id) == 1
local restore = redis.call('HGET', KEYS[8], 'tag:' .. caller)
local queued = registered
if not registered and redis.call('HLEN', KEYS[7]) > 0 then
  add()  -- its place decides; the lease is set below
  queued = true
end
local tokens_ahead, api_ahead = 0, 0
if queued then
  if token then
    tokens_ahead = redis.call('ZRANK', KEYS[4], id)
  else
    tokens_ahead = redis.call('ZCARD', KEYS[4])
    api_ahead = redis.call('ZRANK', KEYS[5], id)
  end
end

-- How many of the first `count` requests of `queue` are due (predicted slot <= now).
local grace = tonumber(ARGV[13])
local function due_in(queue, count)
  local due = 0
  if count > 0 then
    for _, w in ipairs(redis.call('ZRANGE', queue, 0, count - 1)) do
      if tonumber(redis.call('ZSCORE', KEYS[6], w)) - grace <= now then due = due + 1 end
    end
  end
  return due
end

local n = redis.call('ZCARD', KEYS[1])
local cooldown = redis.call('PTTL', KEYS[2])
local spacing = window / limit
-- While callers compete (API requests of two or more queued): the next paced API slot.
local pace = nil
if queued then
  local callers = 0
  for _, field in ipairs(redis.call('HKEYS', KEYS[8])) do
    if string.sub(field, 1, 2) == 'n:' and field ~= 'n:-' then callers = callers + 1 end
  end
  if callers >= 2 then pace = tonumber(redis.call('HGET', KEYS[8], 'pace') or '-inf') end
end
local fits = false
if cooldown <= 0 and n < limit then
  local tokens_due = due_in(KEYS[4], tokens_ahead)
  if token then
    fits = tokens_due < limit - n
  else
    local api_free = api_limit - n
    if pace then
      local paced = 1
      if now < pace then paced = 0 end
      api_free = math.min(api_free, paced)
    end
    local api_due = due_in(KEYS[5], api_ahead)
    fits = api_due < api_free and tokens_due + api_due < limit - n
  end
end
if fits then
  redis.call('ZADD', KEYS[1], now, caller .. ' ' .. id)
  redis.call('PEXPIRE', KEYS[1], window + 1000)
  if pace and not token then
    local next_pace = math.max(pace, now - spacing / 2) + spacing
    redis.call('HSET', KEYS[8], 'pace', string.format('%.3f', next_pace))
  end
  if queued then remove(id, true, nil) end
  local first = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
  local remaining = api_limit - n - 1
  if token then remaining = limit - n - 1 end
  if remaining < 0 then remaining = 0 end
  return reply(1, 0, remaining, first + window - now)
end

-- When the next `count` permits can come in a window of cap per window, each granted as early
-- as it can be and none before start (the list, 0-based).
local function projected(cap, count, start)
  local lo = n - cap
  local g = {}
  if lo + count - 1 >= 0 and lo < n then
    local from, to = math.max(lo, 0), math.min(lo + count - 1, n - 1)
    local raw = redis.call('ZRANGE', KEYS[1], from, to, 'WITHSCORES')
    for i = 2, #raw, 2 do g[from + (i - 2) / 2] = tonumber(raw[i]) end
  end
  local f = {}
  for j = 0, count - 1 do
    local index = n + j - cap
    local slot = start
    if index >= 0 then
      local earlier = g[index]
      if index >= n then earlier = f[index - n] end
      if earlier + window + 1 > slot then slot = earlier + window + 1 end
    end
    f[j] = slot
  end
  return f
end

local start = now
if cooldown > 0 then start = now + cooldown end
local slot
if token then
  slot = projected(limit, tokens_ahead + 1, start)[tokens_ahead]
else
  local mine = projected(api_limit, api_ahead + 1, start)
  local every = projected(limit, tokens_ahead + api_ahead + 1, start)
  slot = -1
  if pace then slot = pace - spacing end
  for j = 0, api_ahead do
    local paced = slot
    if pace then paced = slot + spacing end
    slot = math.max(mine[j], every[tokens_ahead + j], paced)
  end
end
local delay = slot - now
if delay > max_wait then
  if queued then
    if registered then remove(id, false, nil) else remove(id, false, restore) end
  end
  return reply(-1, delay, 0, delay)
end
if not queued then add() end
redis.call('ZADD', KEYS[6], now + delay + tonumber(ARGV[13]), id)
return reply(0, delay, 0, 0)
