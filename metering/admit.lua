--[[
Tollgate: admit one request against every limit of its key, all or nothing (metering/redis_store.py).

Algorithms (per key, all shared by every worker and instance through this one Redis):
  requests/min  sliding-window log: a ZSET of request ids scored by admission time (ms); an entry counts for
                exactly WINDOW ms after it was admitted.
  tokens/min    sliding-window log: a ZSET of request ids by time, a HASH of id -> tokens with a running sum in
                field "_sum" (settlement replaces a reservation by the real amount).
  concurrency   a ZSET of in-flight request ids by admission time; entries older than STALE ms are dropped
                (a worker that died before settling cannot hold a slot forever).
  budget        a HASH {spent, reserved, r:<id> -> reserved amount, x:<id> -> marker of a swept reservation}
                and a ZSET of reservation ids by time; money in integer units of 1e-8 USD.

KEYS: 1 requests zset, 2 tokens zset, 3 tokens hash, 4 in-flight zset, 5 budget hash, 6 budget reservations zset
ARGV: 1 now in ms ('' = this Redis' clock), 2 request id, 3 WINDOW ms, 4 requests limit (-1 = none),
      5 tokens limit (-1 = none), 6 tokens asked, 7 concurrency limit (-1 = none), 8 STALE ms,
      9 budget cap (-1 = none), 10 budget reserve, 11 budget initial spend ('' = unknown), 12 budget ttl s (0 = none),
      13 '1' = take a concurrency slot, '0' = only check one is free
Returns {status, requests counted, requests reset ms, tokens counted, tokens reset ms, in flight, retry ms,
         spent, reserved}; status 0 admitted, 1 requests, 2 tokens, 3 concurrency, 4 budget,
         5 budget counter missing (nothing changed: call again with ARGV[11]), 6 tokens asked > limit.
Nothing but the removal of expired entries changes unless the request is admitted.
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
local rpm_limit = tonumber(ARGV[4])
local tpm_limit = tonumber(ARGV[5])
local tokens = tonumber(ARGV[6])
local conc_limit = tonumber(ARGV[7])
local stale = tonumber(ARGV[8])
local cap = tonumber(ARGV[9])
local reserve = tonumber(ARGV[10])
local budget_ttl = tonumber(ARGV[12])
local hold = ARGV[13] == '1'

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

-- Budget first: a missing counter is initialised from the database's figure before anything is decided.
local spent, reserved = 0, 0
if cap >= 0 then
  if redis.call('EXISTS', KEYS[5]) == 0 then
    if ARGV[11] == '' then return {5, 0, 0, 0, 0, 0, 0, 0, 0} end
    redis.call('HSET', KEYS[5], 'spent', ARGV[11], 'reserved', '0')
  end
  sweep(KEYS[6], KEYS[5], 'reserved', 'r:', now - stale, 'x:')
  local values = redis.call('HMGET', KEYS[5], 'spent', 'reserved')
  spent = tonumber(values[1]) or 0
  reserved = tonumber(values[2]) or 0
end

local rpm_count = 0
if rpm_limit >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  rpm_count = redis.call('ZCARD', KEYS[1])
end

local tpm_used = 0
if tpm_limit >= 0 then
  sweep(KEYS[2], KEYS[3], '_sum', '', now - window, '')
  tpm_used = tonumber(redis.call('HGET', KEYS[3], '_sum')) or 0
end

local conc_count = 0
if conc_limit >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - stale)
  conc_count = redis.call('ZCARD', KEYS[4])
end

local status = 0
if cap >= 0 and spent + reserved + reserve > cap then
  status = 4
elseif rpm_limit >= 0 and rpm_count + 1 > rpm_limit then
  status = 1
elseif tpm_limit >= 0 and tokens > tpm_limit then
  status = 6
elseif tpm_limit >= 0 and tpm_used + tokens > tpm_limit then
  status = 2
elseif conc_limit >= 0 and conc_count + 1 > conc_limit then
  status = 3
end

if status == 0 then
  if rpm_limit >= 0 then
    redis.call('ZADD', KEYS[1], now, id)
    redis.call('PEXPIRE', KEYS[1], window)
    rpm_count = rpm_count + 1
  end
  if tpm_limit >= 0 then
    redis.call('ZADD', KEYS[2], now, id)
    redis.call('HSET', KEYS[3], id, int(tokens))
    tpm_used = redis.call('HINCRBY', KEYS[3], '_sum', int(tokens))
    redis.call('PEXPIRE', KEYS[2], window)
    redis.call('PEXPIRE', KEYS[3], window)
  end
  if conc_limit >= 0 and hold then
    redis.call('ZADD', KEYS[4], now, id)
    redis.call('PEXPIRE', KEYS[4], stale)
    conc_count = conc_count + 1
  end
  if cap >= 0 then
    reserved = redis.call('HINCRBY', KEYS[5], 'reserved', int(reserve))
    redis.call('HSET', KEYS[5], 'r:' .. id, int(reserve))
    redis.call('ZADD', KEYS[6], now, id)
  end
end
if cap >= 0 and budget_ttl > 0 then
  redis.call('EXPIRE', KEYS[5], budget_ttl)
  redis.call('EXPIRE', KEYS[6], budget_ttl)
end

-- Time until the oldest counted request leaves the window; for a refusal, until this request would fit.
local retry = 0
local rpm_reset = 0
if rpm_limit >= 0 then
  local index = 0
  if status == 1 then index = rpm_count - rpm_limit end
  local entry = redis.call('ZRANGE', KEYS[1], index, index, 'WITHSCORES')
  if #entry > 0 then rpm_reset = tonumber(entry[2]) + window - now end
  if status == 1 then
    if rpm_limit == 0 then rpm_reset = window end
    retry = rpm_reset
  end
end

local tpm_reset = 0
if tpm_limit >= 0 and status ~= 2 then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #oldest > 0 then tpm_reset = tonumber(oldest[2]) + window - now end
elseif status == 2 then
  -- Walk the log from the oldest entry until enough tokens would have left the window for this request.
  local need = tpm_used + tokens - tpm_limit
  local freed = 0
  local start = 0
  tpm_reset = window
  local found = false
  while not found do
    local entries = redis.call('ZRANGE', KEYS[2], start, start + 199, 'WITHSCORES')
    if #entries == 0 then break end
    local members = {}
    for i = 1, #entries, 2 do members[#members + 1] = entries[i] end
    local amounts = redis.call('HMGET', KEYS[3], unpack(members))
    for j, amount in ipairs(amounts) do
      freed = freed + (tonumber(amount) or 0)
      if freed >= need then
        tpm_reset = tonumber(entries[2 * j]) + window - now
        found = true
        break
      end
    end
    start = start + 200
  end
  retry = tpm_reset
end

if status == 3 then retry = 1000 end

return {status, rpm_count, rpm_reset, tpm_used, tpm_reset, conc_count, retry, spent, reserved}
