-- The Redis engine's one script: every decision about one id, atomically.
--
-- KEYS[1], the meeting place of one id, is a hash:
--   w, wc, wp, we   the waiter: its token, its replica's channel, its payload,
--                   and when it gives up (Redis's clock, in ms)
--   o, oc, op, oe   the same for a caller that offered to pair with it, until
--                   the waiter's replica accepts
-- and KEYS[1] .. ':r:' .. token holds the waiter's payload for an offerer
-- whose pair was decided, until the offerer's replica has read it.
--
-- A replica learns what concerns its callers on its channel:
--   'O' token '\n' key              an offer to waiter `token`: accept it if
--                                   the waiter is still there
--   'R' token '\n' key '\n' payload offerer `token` is paired; the payload
--   'P' token '\n' key              offerer `token` now waits in the place of
--                                   a waiter that left
-- PUBLISH returns how many replicas listen: 0 means the caller's replica is
-- gone (killed, or cut off from Redis), and nobody is paired with it.
--
-- ARGV[1] is the operation, ARGV[2] the caller's token, then:
--   arrive  channel payload wait_ms may_park
--   accept
--   leave   can_accept
local key, op, token = KEYS[1], ARGV[1], ARGV[2]
-- How long entries outlive their caller's deadline, so that the replica's
-- own answer at the deadline still finds them.
local SLACK_MS = 1000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function expire_within(ms)
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, ms)
  end
end

-- The fields of the meeting place, in this order.
local function state()
  return redis.call('HMGET', key, 'w', 'wp', 'o', 'oc', 'op', 'oe', 'wc')
end

-- Pairs the waiter with the offerer in `s`, if the offerer's replica still
-- listens: the one place a pair is decided. Returns the offerer's payload,
-- or nil after withdrawing an offer nobody can receive an answer to.
local function pair(s)
  local message = 'R' .. s[3] .. '\n' .. key .. '\n' .. s[2]
  if redis.call('PUBLISH', s[4], message) == 0 then
    redis.call('HDEL', key, 'o', 'oc', 'op', 'oe')
    return nil
  end
  local ttl = math.max(tonumber(s[6]) - now_ms(), 0) + SLACK_MS
  redis.call('SET', key .. ':r:' .. s[3], s[2], 'PX', ttl)
  redis.call('DEL', key)
  return s[5]
end

if op == 'arrive' then
  local channel, payload, wait, may_park = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
  local s = state()
  if s[1] then
    -- Someone else is already pairing with the waiter: try again shortly.
    if s[3] then return {'busy'} end
    if redis.call('PUBLISH', s[7], 'O' .. s[1] .. '\n' .. key) > 0 then
      redis.call('HSET', key, 'o', token, 'oc', channel, 'op', payload, 'oe', now_ms() + wait)
      expire_within(wait + SLACK_MS)
      return {'offered'}
    end
    -- Nobody listens for the waiter: its replica is gone. Take its place.
    redis.call('DEL', key)
  end
  if may_park ~= '1' then return {'full'} end
  redis.call('HSET', key, 'w', token, 'wc', channel, 'wp', payload, 'we', now_ms() + wait)
  redis.call('PEXPIRE', key, wait + SLACK_MS)
  return {'parked'}
end

if op == 'accept' then
  local s = state()
  if s[1] == token and s[3] then
    local payload = pair(s)
    if payload then return {'first', payload} end
  end
  return {'none'}
end

if op == 'leave' then
  local can_accept = ARGV[3] == '1'
  local s = state()
  if s[1] == token then
    if s[3] then
      if can_accept then
        -- The deadline came with an offer pending: the offer was first.
        local payload = pair(s)
        if payload then return {'first', payload} end
      elseif redis.call('PUBLISH', s[4], 'P' .. s[3] .. '\n' .. key) > 0 then
        -- The waiter left: its offerer takes its place.
        redis.call('HSET', key, 'w', s[3], 'wc', s[4], 'wp', s[5], 'we', s[6])
        redis.call('HDEL', key, 'o', 'oc', 'op', 'oe')
        redis.call('PEXPIRE', key, math.max(tonumber(s[6]) - now_ms(), 0) + SLACK_MS)
        return {'left'}
      end
    end
    redis.call('DEL', key)
    return {'left'}
  end
  if s[3] == token then
    redis.call('HDEL', key, 'o', 'oc', 'op', 'oe')
    return {'left'}
  end
  local result = key .. ':r:' .. token
  local payload = redis.call('GET', result)
  if payload then
    redis.call('DEL', result)
    return {'second', payload}
  end
  return {'gone'}
end

return redis.error_reply('unknown operation ' .. tostring(op))
