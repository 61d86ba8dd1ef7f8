--[[
Tollgate: settle one admitted request (metering/redis_store.py; the data layout is in admit.lua).

For each scope the request was admitted against (its key's, then its team's): replaces the request's token
reservation by the tokens it really used (if its entry is still in the window), frees its concurrency slot, and
moves its budget reservation to spend at its real cost. Safe to run twice: the second run finds no reservation and
changes nothing.

KEYS: as admit.lua (6 per scope)
ARGV: 1 now in ms ('' = this Redis' clock), 2 request id, 3 WINDOW ms,
      then 2 per scope: real tokens (-1 = no tokens limit), real cost (-1 = no budget)
Returns per scope {tokens counted (-1 if no tokens limit), tokens reset ms}
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
local nscopes = #KEYS / 6

local function int(x)
  return string.format('%d', x)
end

local reply = {}
for s = 1, nscopes do
  local k = (s - 1) * 6
  local tokens = tonumber(ARGV[3 + (s - 1) * 2 + 1])
  local cost = tonumber(ARGV[3 + (s - 1) * 2 + 2])

  local tpm_used, tpm_reset = -1, 0
  if tokens >= 0 then
    -- Drop what left the window (as admit.lua does), so that the count returned for the headers is current.
    local gone = redis.call('ZRANGEBYSCORE', KEYS[k + 2], '-inf', now - window, 'LIMIT', 0, 500)
    if #gone > 0 then
      local freed = 0
      for _, amount in ipairs(redis.call('HMGET', KEYS[k + 3], unpack(gone))) do
        freed = freed + (tonumber(amount) or 0)
      end
      redis.call('HDEL', KEYS[k + 3], unpack(gone))
      redis.call('ZREM', KEYS[k + 2], unpack(gone))
      redis.call('HINCRBY', KEYS[k + 3], '_sum', int(-freed))
    end
    local old = redis.call('HGET', KEYS[k + 3], id)
    if old then
      redis.call('HSET', KEYS[k + 3], id, int(tokens))
      tpm_used = redis.call('HINCRBY', KEYS[k + 3], '_sum', int(tokens - tonumber(old)))
    else
      tpm_used = tonumber(redis.call('HGET', KEYS[k + 3], '_sum')) or 0
    end
    local oldest = redis.call('ZRANGE', KEYS[k + 2], 0, 0, 'WITHSCORES')
    if #oldest > 0 then tpm_reset = math.max(0, tonumber(oldest[2]) + window - now) end
  end

  redis.call('ZREM', KEYS[k + 4], id)

  if cost >= 0 then
    local amount = redis.call('HGET', KEYS[k + 5], 'r:' .. id)
    if amount then
      redis.call('HDEL', KEYS[k + 5], 'r:' .. id)
      redis.call('ZREM', KEYS[k + 6], id)
      redis.call('HINCRBY', KEYS[k + 5], 'reserved', int(-tonumber(amount)))
      redis.call('HINCRBY', KEYS[k + 5], 'spent', int(cost))
    elseif redis.call('HDEL', KEYS[k + 5], 'x:' .. id) == 1 then
      -- Its reservation was swept as stale while the request was still running: its spend still counts.
      redis.call('HINCRBY', KEYS[k + 5], 'spent', int(cost))
    end
  end
  reply[#reply + 1] = tpm_used
  reply[#reply + 1] = tpm_reset
end
return reply
