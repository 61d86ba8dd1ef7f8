--[[
Tollgate: admit one request against every limit of its key and, for a key in a team, of its team: all or nothing
(metering/redis_store.py).

Algorithms (per scope: a key lineage or a team, all shared by every worker and instance through this one Redis):
  requests/min  sliding-window log: a ZSET of request ids scored by admission time (ms); an entry counts for
                exactly WINDOW ms after it was admitted.
  tokens/min    sliding-window log: a ZSET of request ids by time, a HASH of id -> tokens with a running sum in
                field "_sum" (settlement replaces a reservation by the real amount).
  concurrency   a ZSET of in-flight request ids by admission time; entries older than STALE ms are dropped
                (a worker that died before settling cannot hold a slot forever).
  budget        a HASH {spent, reserved, r:<id> -> reserved amount, x:<id> -> marker of a swept reservation}
                and a ZSET of reservation ids by time; money in integer units of 1e-8 USD.

KEYS: 6 per scope (the key's first, then its team's, if any): 1 requests zset, 2 tokens zset, 3 tokens hash,
      4 in-flight zset, 5 budget hash, 6 budget reservations zset
ARGV: 1 now in ms ('' = this Redis' clock), 2 request id, 3 WINDOW ms, 4 STALE ms,
      5 '1' = take a concurrency slot, '0' = only check one is free;
      then 8 per scope: requests limit (-1 = none), tokens limit (-1 = none), tokens asked, concurrency limit
      (-1 = none), budget cap (-1 = none), budget reserve, budget initial spend ('' = unknown), budget ttl s (0 = none)
Returns {status, refusing scope (0 key, 1 team), retry ms, then per scope: requests counted, requests reset ms,
         tokens counted, tokens reset ms, in flight, spent, reserved};
         status 0 admitted, 1 requests, 2 tokens, 3 concurrency, 4 budget,
         5 budget counter missing (nothing changed: call again with that scope's initial spend), 6 tokens asked >
         limit.
Nothing but the removal of expired entries (and a budget counter's initialisation) changes unless the request is
admitted against every scope.
]]

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end
local id = ARGV[2]
local window = tonumber(ARGV[3])
local stale = tonumber(ARGV[4])
local hold = ARGV[5] == '1'
local nscopes = #KEYS / 6

local function int(x)
  return string.format('%d', x)
end

-- Remove the members of `zkey` scored at or before `upto` and their amounts (hash fields prefix..member) from
-- `hkey`; subtract them from hash field `sumfield`. A non-empty `marker` keeps a field marker..member per removed
-- member (a late settlement still finds it).
local function sweep(zkey, hkey, sumfield, prefix, upto, marker)
  local freed = 0
  while true do
    local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', upto, 'LIMIT', 0, 500)
    if #gone == 0 then break end
    local fields = {}
    for i, member in ipairs(gone) do fields[i] = prefix .. member end
    local amounts = redis.call('HMGET', hkey, unpack(fields))
    for _, amount in ipairs(amounts) do freed = freed + (tonumber(amount) or 0) end
    redis.call('HDEL', hkey, unpack(fields))
    if marker ~= '' then
      for _, member in ipairs(gone) do redis.call('HSET', hkey, marker .. member, '1') end
    end
    redis.call('ZREM', zkey, unpack(gone))
    if #gone < 500 then break end
  end
  if freed ~= 0 then redis.call('HINCRBY', hkey, sumfield, int(-freed)) end
end

-- Read every scope's state (budget first: a missing counter is initialised before anything is decided).
local scopes = {}
for s = 1, nscopes do
  local k = (s - 1) * 6
  local a = 5 + (s - 1) * 8
  local sc = {
    k = k,
    rpm_limit = tonumber(ARGV[a + 1]),
    tpm_limit = tonumber(ARGV[a + 2]),
    tokens = tonumber(ARGV[a + 3]),
    conc_limit = tonumber(ARGV[a + 4]),
    cap = tonumber(ARGV[a + 5]),
    reserve = tonumber(ARGV[a + 6]),
    initial = ARGV[a + 7],
    budget_ttl = tonumber(ARGV[a + 8]),
    spent = 0, reserved = 0, rpm_count = 0, tpm_used = 0, conc_count = 0, rpm_reset = 0, tpm_reset = 0,
  }
  if sc.cap >= 0 then
    if redis.call('EXISTS', KEYS[k + 5]) == 0 then
      if sc.initial == '' then return {5, s - 1, 0} end
      redis.call('HSET', KEYS[k + 5], 'spent', sc.initial, 'reserved', '0')
    end
    sweep(KEYS[k + 6], KEYS[k + 5], 'reserved', 'r:', now - stale, 'x:')
    local values = redis.call('HMGET', KEYS[k + 5], 'spent', 'reserved')
    sc.spent = tonumber(values[1]) or 0
    sc.reserved = tonumber(values[2]) or 0
  end
  if sc.rpm_limit >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', now - window)
    sc.rpm_count = redis.call('ZCARD', KEYS[k + 1])
  end
  if sc.tpm_limit >= 0 then
    sweep(KEYS[k + 2], KEYS[k + 3], '_sum', '', now - window, '')
    sc.tpm_used = tonumber(redis.call('HGET', KEYS[k + 3], '_sum')) or 0
  end
  if sc.conc_limit >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 4], '-inf', now - stale)
    sc.conc_count = redis.call('ZCARD', KEYS[k + 4])
  end
  scopes[s] = sc
end

-- Decide: the first scope that refuses (the key before its team) refuses the request.
local status, refusing = 0, 0
for s = 1, nscopes do
  local sc = scopes[s]
  if sc.cap >= 0 and sc.spent + sc.reserved + sc.reserve > sc.cap then
    status = 4
  elseif sc.rpm_limit >= 0 and sc.rpm_count + 1 > sc.rpm_limit then
    status = 1
  elseif sc.tpm_limit >= 0 and sc.tokens > sc.tpm_limit then
    status = 6
  elseif sc.tpm_limit >= 0 and sc.tpm_used + sc.tokens > sc.tpm_limit then
    status = 2
  elseif sc.conc_limit >= 0 and sc.conc_count + 1 > sc.conc_limit then
    status = 3
  end
  if status ~= 0 then
    refusing = s
    break
  end
end

-- Count the request against every scope, or against none.
for s = 1, nscopes do
  local sc = scopes[s]
  local k = sc.k
  if status == 0 then
    if sc.rpm_limit >= 0 then
      redis.call('ZADD', KEYS[k + 1], now, id)
      redis.call('PEXPIRE', KEYS[k + 1], window)
      sc.rpm_count = sc.rpm_count + 1
    end
    if sc.tpm_limit >= 0 then
      redis.call('ZADD', KEYS[k + 2], now, id)
      redis.call('HSET', KEYS[k + 3], id, int(sc.tokens))
      sc.tpm_used = redis.call('HINCRBY', KEYS[k + 3], '_sum', int(sc.tokens))
      redis.call('PEXPIRE', KEYS[k + 2], window)
      redis.call('PEXPIRE', KEYS[k + 3], window)
    end
    if sc.conc_limit >= 0 and hold then
      redis.call('ZADD', KEYS[k + 4], now, id)
      redis.call('PEXPIRE', KEYS[k + 4], stale)
      sc.conc_count = sc.conc_count + 1
    end
    if sc.cap >= 0 then
      sc.reserved = redis.call('HINCRBY', KEYS[k + 5], 'reserved', int(sc.reserve))
      redis.call('HSET', KEYS[k + 5], 'r:' .. id, int(sc.reserve))
      redis.call('ZADD', KEYS[k + 6], now, id)
    end
  end
  if sc.cap >= 0 and sc.budget_ttl > 0 then
    redis.call('EXPIRE', KEYS[k + 5], sc.budget_ttl)
    redis.call('EXPIRE', KEYS[k + 6], sc.budget_ttl)
  end
end

-- Time until the oldest counted request leaves the window; for the refusing scope, until this request would fit.
local retry = 0
for s = 1, nscopes do
  local sc = scopes[s]
  local k = sc.k
  local mine = s == refusing
  if sc.rpm_limit >= 0 then
    local index = 0
    if mine and status == 1 then index = sc.rpm_count - sc.rpm_limit end
    local entry = redis.call('ZRANGE', KEYS[k + 1], index, index, 'WITHSCORES')
    if #entry > 0 then sc.rpm_reset = tonumber(entry[2]) + window - now end
    if mine and status == 1 then
      if sc.rpm_limit == 0 then sc.rpm_reset = window end
      retry = sc.rpm_reset
    end
  end
  if sc.tpm_limit >= 0 and not (mine and status == 2) then
    local oldest = redis.call('ZRANGE', KEYS[k + 2], 0, 0, 'WITHSCORES')
    if #oldest > 0 then sc.tpm_reset = tonumber(oldest[2]) + window - now end
  elseif mine and status == 2 then
    -- Walk the log from the oldest entry until enough tokens would have left the window for this request.
    local need = sc.tpm_used + sc.tokens - sc.tpm_limit
    local freed = 0
    local start = 0
    sc.tpm_reset = window
    local found = false
    while not found do
      local entries = redis.call('ZRANGE', KEYS[k + 2], start, start + 199, 'WITHSCORES')
      if #entries == 0 then break end
      local members = {}
      for i = 1, #entries, 2 do members[#members + 1] = entries[i] end
      local amounts = redis.call('HMGET', KEYS[k + 3], unpack(members))
      for j, amount in ipairs(amounts) do
        freed = freed + (tonumber(amount) or 0)
        if freed >= need then
          sc.tpm_reset = tonumber(entries[2 * j]) + window - now
          found = true
          break
        end
      end
      start = start + 200
    end
    retry = sc.tpm_reset
  end
end
if status == 3 then retry = 1000 end

local reply = {status, math.max(refusing - 1, 0), retry}
for s = 1, nscopes do
  local sc = scopes[s]
  for _, v in ipairs({sc.rpm_count, sc.rpm_reset, sc.tpm_used, sc.tpm_reset, sc.conc_count, sc.spent, sc.reserved}) do
    reply[#reply + 1] = v
  end
end
return reply
