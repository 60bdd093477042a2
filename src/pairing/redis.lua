-- The Redis engine's one script: every decision about one id, atomically.
--
-- On a cluster, everything one run touches is in one slot: KEYS[1] is
-- PREFIX 'v4{' BUCKET '}' HASH, every other key it names starts with KEYS[1],
-- and every channel it publishes to is a replica's shard channel for the
-- same bucket, PREFIX '{' BUCKET '}replica:' ID (see `publish` below, and
-- slots.rs for the buckets). Off a cluster, where there are no slots, a
-- keyed arrival also binds its attempt key (KEYS[2], see below).
--
-- KEYS[1], the meeting place of one id, is a hash:
--   w, wc, wp, we   the waiter: its token, its replica's channel, its payload,
--                   and when it gives up (Redis's clock, in ms)
--   o, oc, op, oe   the same for a caller that offered to pair with it, until
--                   the waiter's replica accepts
-- and KEYS[1] .. ':r:' .. token holds the waiter's payload for an offerer
-- whose pair was decided, until the offerer's replica has read it.
-- A caller with an attempt key also has, beside its w or o fields:
--   wk, wg, ws      (ok, og for an offerer) its key's digest, how long its
--                   answer is kept (ms), and when it parked
--   wn, wt          (on, ot) which try of its wait it is: how many came
--                   before it, as its client counts, and when it reached its
--                   replica (that replica's clock, in us)
--   ak              '1': a caller of this place has (or had) a key
-- A keyed waiter whose replica shut down is detached: its w and wc are ''
-- (nobody can be told anything until its retry takes the place back), and
-- the place expires after the grace.
-- and once its pair is decided, KEYS[1] .. ':k:' .. digest holds its answer,
-- SHA-1 of its own payload '\n' role '\n' waited_ms '\n' sealed payload, for
-- a retry through any replica. The SHA-1 is how a retry with another payload
-- is told its key was reused (a record without one, from an older replica,
-- is handed out unchecked).
--
-- A group of more than two (WaitForParties) forming under an id keeps other
-- fields in the same hash, so that a pair and a group never share an id:
--   n, k, b         its size, how many members wait, their payload bytes
--   t<i> c<i> p<i> e<i> l<i>
--                   member i (1..k, in arrival order): token, channel,
--                   sealed payload, when it gives up, payload length
--   d<i> g<i> s<i> r<i> u<i>
--                   for a member with an attempt key: its digest, grace,
--                   when it parked, and which try holds its place (as wn, wt)
--   h<i>            until when a keyed member whose replica shut down is
--                   held (its c<i> is ''), for its retry to take back
--   o, oc, op, oe, ol
--                   the caller that would complete it, until every member's
--                   replica has confirmed its member is still there (and
--                   ok, og, os, on, ot, if it has a key)
--   a, a<i>         how many have confirmed, and whether member i has
-- A keyed member whose replica does not listen (killed, or shut down) is
-- confirmed by the group itself while it is held: its answer waits for it.
-- A completed group's payloads go to the hash KEYS[1] .. ':g:' .. the last
-- caller's token (fields `list`, and `left`: how many members have yet to
-- collect it; the last to collect removes it), and each member's position
-- and that key's name to KEYS[1] .. ':q:' .. its token, in case its message
-- is missed. A keyed member's answer is also kept, as a pair's, in
-- KEYS[1] .. ':k:' .. digest: SHA-1 of its payload '\n' 'group\n' waited_ms
-- '\n' parties '\n' position '\n' payloads.
--
-- A replica learns what concerns its callers on its channel:
--   'O' token '\n' key              an offer to waiter `token`: accept it if
--                                   the waiter is still there
--   'R' token '\n' key '\n' payload offerer `token` is paired; the payload
--   'P' token '\n' key              offerer `token` now waits in the place of
--                                   a waiter that left (or, in a group, as
--                                   its last member)
--   'G' token '\n' key '\n' position '\n' result
--                                   member `token`'s group completed; its
--                                   payloads are in the key `result`
--   'X' token '\n' key              waiter `token` was taken over by a
--                                   retry with its attempt key
--   'W' token '\n' key              caller `token`'s wait was withdrawn with
--                                   its attempt key, and its place taken out
-- Publishing returns how many replicas listen: 0 means the caller's replica
-- is gone (killed, or cut off from Redis), and nobody is paired with it.
--
-- ARGV[1] is the operation, ARGV[2] the caller's token, then:
--   arrive  channel payload wait_ms may_park
--           [key_digest grace_ms previous_tries tried_us [binding binding_ms]]
--   accept
--   leave   can_accept
--   detach                          (a shutting-down replica's keyed waiter)
--   join    channel payload wait_ms may_park parties payload_len max_bytes
--           [key_digest grace_ms previous_tries tried_us [binding binding_ms]]
-- (a binding, with KEYS[2], only off a cluster: see below).
--   confirm
--   claim                           (a member of a completed group)
--   withdraw key_digest grace_ms    (token unused: the wait is found by its
--                                   attempt key's digest, through any replica)
-- A retry handed an answer kept for its attempt key gets 'kept', then the
-- answer as its first try got it; one that sent another payload than the
-- try whose place or answer it finds gets 'reused'; one whose wait was
-- withdrawn gets 'withdrawn'. A withdrawal is kept where answers are, in
-- KEYS[1] .. ':k:' .. digest, as 'withdrawn\n\n', for the grace.
local key, op, token = KEYS[1], ARGV[1], ARGV[2]
-- How long entries outlive their caller's deadline, so that the replica's
-- own answer at the deadline still finds them.
local SLACK_MS = 1000

-- Every number the script computes goes through this on its way into a
-- command (literals such as 1 and -1 are written as text). Redis turns a Lua number
-- argument into text as it prints a double: -0 becomes '-0', a fraction
-- '0.5', and past 2^53 an exponent, and commands that want an integer
-- refuse all three ('value is not an integer'). A member with an empty
-- payload took its 0 bytes away from its group's count as -0 (issue 21).
local function int(n)
  return string.format('%d', tonumber(n))
end

-- Wake-ups go to the receiving replica's channel. On one primary that is a
-- classic channel, one per replica. In a cluster, a classic PUBLISH would be
-- broadcast to every node and count the receivers of one, so there a replica
-- has a shard channel per bucket of ids, named with the bucket's hash tag:
-- the channel of any caller an id's script wakes is then in the slot of the
-- id's keys, as a cluster requires of everything a script touches, and
-- SPUBLISH counts exactly the replicas that listen to it. A channel's name
-- says which kind it is: only shard channels have braces.
local function sharded(channel)
  return string.find(channel, '{', 1, true) ~= nil
end

local function publish(channel, message)
  -- A detached waiter's: nobody listens.
  if channel == '' then return 0 end
  if sharded(channel) then
    return redis.call('SPUBLISH', channel, message)
  end
  return redis.call('PUBLISH', channel, message)
end

-- A keyed arrival binds its attempt key to its id: KEYS[2], named after the
-- key's hash, holds the id's hash and the group size (the last two ARGV are
-- that binding and how long it lasts, in ms), so that a try that names
-- another id or size is refused through any replica. Only off a cluster:
-- there, a script's keys must share a slot, and the replica binds the key
-- with a SET of its own before arriving.
if KEYS[2] then
  local binding, lasts = ARGV[#ARGV - 1], ARGV[#ARGV]
  local bound = redis.call('GET', KEYS[2])
  if not bound then
    redis.call('SET', KEYS[2], binding, 'PX', lasts)
  elseif bound ~= binding then
    return {'rebound', bound}
  end
end

-- How many replicas listen on each of `channels`, all of the kind of
-- `like`. A detached member's channel, '', has nobody (and on a cluster is
-- in another slot, so it is not asked about).
local function numsub(channels, like)
  local asked, at = {}, {}
  for i, channel in ipairs(channels) do
    if channel ~= '' then
      asked[#asked + 1] = channel
      at[i] = #asked
    end
  end
  local reply = redis.call('PUBSUB', sharded(like) and 'SHARDNUMSUB' or 'NUMSUB', unpack(asked))
  local counts = {}
  for i = 1, #channels do
    counts[i] = at[i] and reply[2 * at[i]] or 0
  end
  return counts
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function expire_within(ms)
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, int(ms))
  end
end

-- The fields of the meeting place, in this order; the last, ak, is set once
-- either caller has an attempt key. Their keys' own fields are read only
-- then (`keys`): five more fields in every read cost a pair without keys
-- 8% more of Redis's time.
local function state()
  return redis.call('HMGET', key, 'w', 'wp', 'o', 'oc', 'op', 'oe', 'wc', 'n', 'ak')
end

-- The attempt keys' fields of the place in `s`: the waiter's wk, wg, ws,
-- then the offerer's ok, og, then wn, wt, on, ot; none if neither caller
-- has a key.
local function keys(s)
  if not s[9] then return {} end
  return redis.call('HMGET', key, 'wk', 'wg', 'ws', 'ok', 'og', 'wn', 'wt', 'on', 'ot')
end

local OFFER = {'o', 'oc', 'op', 'oe', 'ok', 'og', 'on', 'ot'}

-- Whether try (n, t) of a wait comes before try (wn, wt) of it: by the
-- tries before each, then by when each reached its replica.
local function earlier(n, t, wn, wt)
  n, t, wn, wt = tonumber(n), tonumber(t), tonumber(wn or '0'), tonumber(wt or '0')
  return n < wn or (n == wn and t < wt)
end

-- Ends a decided pair: each side with an attempt key (the waiter's wk, wg,
-- ws; the offerer's ok, og) has its answer kept for its retry, and the
-- meeting place goes. Returns how long the waiter waited, as Redis measured
-- it, for a waiter with a key: the others measure their own wait.
-- A sealed offer's payload without its trace context, a flag byte of 1 and
-- 25 bytes (src/pairing/redis/wire.rs): what a retry must send again,
-- whatever trace each of its tries is part of.
local function unsealed(sealed)
  if string.byte(sealed, 1) == 1 then return string.sub(sealed, 27) end
  return string.sub(sealed, 2)
end

-- Whether two sealed offers carry the same payload.
local function same_payload(a, b)
  return a == b or unsealed(a) == unsealed(b)
end

local function decide(waiter_payload, offerer_payload, wk, wg, ws, ok, og)
  local waited = nil
  if wk then
    waited = int(math.max(now_ms() - tonumber(ws), 0))
    redis.call('SET', key .. ':k:' .. wk,
      redis.sha1hex(unsealed(waiter_payload)) .. '\nfirst\n' .. waited .. '\n' .. offerer_payload, 'PX', wg)
  end
  if ok then
    redis.call('SET', key .. ':k:' .. ok,
      redis.sha1hex(unsealed(offerer_payload)) .. '\nsecond\n0\n' .. waiter_payload, 'PX', og)
  end
  redis.call('DEL', key)
  return waited
end

-- Pairs the waiter with the offerer in `s`, if the offerer's replica still
-- listens or the offerer has an attempt key to come back with: the one
-- place a pair is decided. Returns the offerer's payload and how long the
-- waiter waited, or nil after withdrawing an offer nobody can receive an
-- answer to.
local function pair(s)
  local message = 'R' .. s[3] .. '\n' .. key .. '\n' .. s[2]
  local k = keys(s)
  if publish(s[4], message) == 0 and not k[4] then
    redis.call('HDEL', key, unpack(OFFER))
    return nil
  end
  local ttl = math.max(tonumber(s[6]) - now_ms(), 0) + SLACK_MS
  redis.call('SET', key .. ':r:' .. s[3], s[2], 'PX', int(ttl))
  return s[5], decide(s[2], s[5], k[1], k[2], k[3], k[4], k[5])
end

-- Groups of more than two. Their helpers are built only for the
-- operations that use them: a script builds every closure and table it
-- defines on every run, and the two a pair runs most (arrive, accept) would
-- otherwise pay for a dozen they never call.
local FIELDS, COMPLETER, member_of, remove_member, add_member, held,
  keyed_member, withdraw_completion, complete, confirm, collect, grouped
if op ~= 'arrive' and op ~= 'accept' then
  FIELDS = {'t', 'c', 'p', 'e', 'l', 'a', 'd', 'g', 's', 'r', 'u', 'h'}

  function member_of(t)
    local k = tonumber(redis.call('HGET', key, 'k') or '0')
    for i = 1, k do
      if redis.call('HGET', key, 't' .. i) == t then return i, k end
    end
    return nil, k
  end

  -- Removes member i of k, keeping the others in arrival order.
  function remove_member(i, k)
    local l = tonumber(redis.call('HGET', key, 'l' .. i))
    for j = i, k - 1 do
      for _, f in ipairs(FIELDS) do
        local v = redis.call('HGET', key, f .. (j + 1))
        if v then redis.call('HSET', key, f .. j, v) else redis.call('HDEL', key, f .. j) end
      end
    end
    for _, f in ipairs(FIELDS) do redis.call('HDEL', key, f .. k) end
    redis.call('HSET', key, 'k', int(k - 1))
    redis.call('HINCRBY', key, 'b', int(-l))
    return k - 1
  end

  -- `keyed`, for a member with an attempt key: its digest, grace, when it
  -- parked, and its try's order.
  function add_member(k, t, c, p, e, l, keyed)
    k = k + 1
    redis.call('HSET', key, 'k', int(k), 't' .. k, t, 'c' .. k, c, 'p' .. k, p, 'e' .. k, int(e), 'l' .. k, int(l))
    if keyed and keyed[1] then
      redis.call('HSET', key, 'd' .. k, keyed[1], 'g' .. k, keyed[2], 's' .. k, keyed[3],
        'r' .. k, keyed[4] or '0', 'u' .. k, keyed[5] or '0')
    end
    redis.call('HINCRBY', key, 'b', int(l))
    expire_within(math.max(tonumber(e) - now_ms(), 0) + SLACK_MS)
    return k
  end

  -- Whether a member that nobody listens for is still held for its retry:
  -- it has a key, its deadline has not passed, and if its replica let go of
  -- it, neither has its hold. `m` holds its d, e and h fields.
  function held(m, now)
    return m[1] ~= false and m[1] ~= nil and tonumber(m[2]) > now
      and (not m[3] or tonumber(m[3]) > now)
  end

  -- The member whose attempt key has `digest`, if any.
  function keyed_member(digest, k)
    for i = 1, k do
      if redis.call('HGET', key, 'd' .. i) == digest then return i end
    end
    return nil
  end

  -- Withdraws the pending completion: confirmations are forgotten, and the
  -- caller that would have completed the group joins it as its last member
  -- (if `promote`, and its replica still listens).
  COMPLETER = {'o', 'oc', 'op', 'oe', 'ol', 'a', 'ok', 'og', 'os', 'on', 'ot'}

  function withdraw_completion(k, promote)
    local o = redis.call('HMGET', key, unpack(COMPLETER))
    redis.call('HDEL', key, unpack(COMPLETER))
    for i = 1, k do redis.call('HDEL', key, 'a' .. i) end
    if promote and o[1] and publish(o[2], 'P' .. o[1] .. '\n' .. key) > 0 then
      k = add_member(k, o[1], o[2], o[3], o[4], o[5], {o[7], o[8], o[9], o[10], o[11]})
    end
    return k
  end

  -- Completes the group: every member's replica has confirmed (or the member
  -- is held for its retry), member `me` last (k + 1: the completing caller).
  -- Returns its answer, or nil if a replica stopped listening since (then
  -- that member is dropped, and the group forms on).
  function complete(me, k)
    local now = now_ms()
    local channels, tokens, payloads, ends, keyed = {}, {}, {}, {}, {}
    for i = 1, k do
      local m = redis.call('HMGET', key, 't' .. i, 'c' .. i, 'p' .. i, 'e' .. i, 'd' .. i, 'g' .. i,
        's' .. i, 'h' .. i)
      tokens[i], channels[i], payloads[i], ends[i] = m[1], m[2], m[3], m[4]
      keyed[i] = {m[5], m[6], m[7], m[8]}
    end
    local o = redis.call('HMGET', key, 'o', 'oc', 'op', 'oe', 'ok', 'og', 'os')
    tokens[k + 1], channels[k + 1], payloads[k + 1], ends[k + 1] = o[1], o[2], o[3], o[4]
    keyed[k + 1] = {o[5], o[6], o[7], false}
    local listening = numsub(channels, o[2])
    -- Members nobody listens for: held ones get their answer kept, the rest
    -- are gone.
    local absent, gone = {}, {}
    for i = 1, k + 1 do
      if listening[i] == 0 then
        if held({keyed[i][1], ends[i], keyed[i][4]}, now) then
          absent[i] = true
        else
          gone[#gone + 1] = i
        end
      end
    end
    if #gone > 0 then
      for j = #gone, 1, -1 do
        if gone[j] <= k then k = remove_member(gone[j], k) end
      end
      withdraw_completion(k, listening[k + 1] ~= 0)
      return nil
    end
    local list = {}
    local latest = 0
    for i = 1, k + 1 do
      list[i] = #payloads[i] .. ':' .. payloads[i]
      latest = math.max(latest, tonumber(ends[i]))
    end
    list = table.concat(list)
    local parties = int(k + 1)
    -- How long keyed member i waited, as Redis measured it ('' for the others,
    -- who measure their own), and its answer kept for its retry.
    local waited = {}
    for i = 1, k + 1 do
      waited[i] = ''
      if keyed[i][1] then
        waited[i] = int(math.max(now - tonumber(keyed[i][3]), 0))
        redis.call('SET', key .. ':k:' .. keyed[i][1], redis.sha1hex(unsealed(payloads[i])) .. '\ngroup\n'
          .. waited[i] .. '\n' .. parties .. '\n' .. (i - 1) .. '\n' .. list, 'PX', keyed[i][2])
      end
    end
    local readers = 0
    for i = 1, k + 1 do
      if i ~= me and not absent[i] then readers = readers + 1 end
    end
    local ttl = int(math.max(latest - now, 0) + SLACK_MS)
    local result = key .. ':g:' .. o[1]
    if readers > 0 then
      redis.call('HSET', result, 'list', list, 'left', int(readers))
      redis.call('PEXPIRE', result, ttl)
    end
    for i = 1, k + 1 do
      if i ~= me and not absent[i] then
        local where = (i - 1) .. '\n' .. waited[i] .. '\n' .. result
        redis.call('SET', key .. ':q:' .. tokens[i], where, 'PX', ttl)
        publish(channels[i], 'G' .. tokens[i] .. '\n' .. key .. '\n' .. where)
      end
    end
    redis.call('DEL', key)
    return {'group', tostring(me - 1), list, waited[me]}
  end

  -- Member i confirms that its caller is still there. Returns an answer if
  -- that completed the group.
  function confirm(i, k)
    if redis.call('HEXISTS', key, 'a' .. i) == 0 then
      redis.call('HSET', key, 'a' .. i, '1')
      redis.call('HINCRBY', key, 'a', 1)
    end
    if tonumber(redis.call('HGET', key, 'a')) < k then return nil end
    return complete(i, k)
  end

  -- A completed group's payloads, for one of the members it was not handed
  -- to: the last of them to collect removes them.
  function collect(result)
    local list = redis.call('HGET', result, 'list')
    if list and redis.call('HINCRBY', result, 'left', -1) <= 0 then
      redis.call('DEL', result)
    end
    return list
  end

  -- A group's answer for a caller no longer in it, if its group completed.
  function grouped(t)
    local where = redis.call('GET', key .. ':q:' .. t)
    if not where then return nil end
    redis.call('DEL', key .. ':q:' .. t)
    local position, waited, result = string.match(where, '^(%d+)\n(%d*)\n(.*)$')
    local list = collect(result)
    if not list then return nil end
    return {'group', position, list, waited}
  end
end

if op == 'claim' then
  -- A member's copy of its completed group's payloads, through its record
  -- of the group: the member claims it once its message came, or its
  -- cleanup does if it left first, and only one of them gets it.
  return grouped(token) or {'none'}
end

-- An answer kept for a retry with an attempt key: the role (a pair's
-- 'first' or 'second', or 'group'), how long it waited, and the rest; or
-- 'reused' if the retry's payload is not the one its answer was kept for.
local function kept_answer(digest, payload)
  local kept = redis.call('GET', key .. ':k:' .. digest)
  if not kept then return nil end
  local sha = string.match(kept, '^(%x+)\n')
  if sha then
    if sha ~= redis.sha1hex(unsealed(payload)) then return 'reused' end
    kept = string.sub(kept, #sha + 2)
  end
  return string.match(kept, '^(%a+)\n(%d*)\n(.*)$')
end

if op == 'join' then
  local channel, payload, wait, may_park = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
  local parties, len, max_bytes = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
  local digest, grace = ARGV[10], ARGV[11]
  local previous, tried = ARGV[12] or '0', ARGV[13] or '0'
  if digest then
    -- A retry whose group completed: its answer, again.
    local role, waited, rest = kept_answer(digest, payload)
    if role == 'reused' or role == 'withdrawn' then return {role} end
    if role == 'group' then
      local n, position, list = string.match(rest, '^(%d+)\n(%d+)\n(.*)$')
      if n ~= parties then return {'mismatch', n} end
      return {'kept', 'group', position, list, waited}
    end
    if role then return {'mismatch', '2'} end
  end
  local g = redis.call('HMGET', key, 'w', 'n', 'k', 'b', 'o')
  if g[1] then return {'mismatch', '2'} end
  if g[2] and g[2] ~= parties then return {'mismatch', g[2]} end
  local k, held_bytes = tonumber(g[3] or '0'), tonumber(g[4] or '0')
  local i = digest and keyed_member(digest, k)
  if i then
    -- A member's own retry, through this replica or another: it takes its
    -- place (and position) back, with its first try's deadline, as a
    -- pair's waiter does; a try still open elsewhere is told it was
    -- superseded. A completion waiting for its confirmation asks again.
    local m = redis.call('HMGET', key, 't' .. i, 'c' .. i, 'r' .. i, 'u' .. i, 'e' .. i, 'a' .. i,
      'p' .. i)
    if not same_payload(m[7], payload) then return {'reused'} end
    if earlier(previous, tried, m[3], m[4]) then return {'superseded'} end
    if may_park ~= '1' then return {'full'} end
    publish(m[2], 'X' .. m[1] .. '\n' .. key)
    redis.call('HSET', key, 't' .. i, token, 'c' .. i, channel, 'r' .. i, previous, 'u' .. i, tried)
    redis.call('HDEL', key, 'h' .. i)
    if g[5] and not m[6] then publish(channel, 'O' .. token .. '\n' .. key) end
    return {'parked', int(math.max(tonumber(m[5]) - now_ms(), 0))}
  end
  -- Another caller is completing the group: try again shortly. (The
  -- completing caller's own retry, too: within a round trip the group has
  -- completed, and its answer is kept, or the completion was withdrawn.)
  if g[5] then return {'busy'} end
  if held_bytes + len > max_bytes then return {'toolarge', tostring(held_bytes)} end
  local now = now_ms()
  local expires = now + wait
  if k + 1 == tonumber(parties) then
    -- Ask every member's replica to confirm. A member that nobody listens
    -- for is gone, and so is its place, unless it is held for its retry:
    -- then the group confirms it, and its answer waits for it.
    local held_ones = {}
    local j = 1
    while j <= k do
      local m = redis.call('HMGET', key, 't' .. j, 'c' .. j, 'd' .. j, 'e' .. j, 'h' .. j)
      if publish(m[2], 'O' .. m[1] .. '\n' .. key) > 0 then
        j = j + 1
      elseif held({m[3], m[4], m[5]}, now) then
        held_ones[#held_ones + 1] = j
        j = j + 1
      else
        k = remove_member(j, k)
      end
    end
    if k + 1 == tonumber(parties) then
      redis.call('HSET', key, 'o', token, 'oc', channel, 'op', payload, 'oe', int(expires), 'ol', int(len),
        'a', int(#held_ones))
      for _, h in ipairs(held_ones) do redis.call('HSET', key, 'a' .. h, '1') end
      if digest then
        redis.call('HSET', key, 'ok', digest, 'og', grace, 'os', int(now), 'on', previous, 'ot', tried)
      end
      expire_within(wait + SLACK_MS)
      if #held_ones < k then return {'offered'} end
      -- Nobody to wait for: this caller completes the group (or, if its own
      -- replica stopped listening just now, tries again).
      return complete(k + 1, k) or {'busy'}
    end
  end
  if may_park ~= '1' then
    -- Members that were dropped above may have been the last ones.
    if k == 0 then redis.call('DEL', key) end
    return {'full'}
  end
  redis.call('HSET', key, 'n', parties)
  add_member(k, token, channel, payload, expires, len, digest and {digest, grace, int(now), previous, tried})
  return {'parked'}
end

if op == 'confirm' then
  if not redis.call('HGET', key, 'o') then return {'none'} end
  local i, k = member_of(token)
  if not i then return {'none'} end
  return confirm(i, k) or {'none'}
end

if op == 'arrive' then
  local channel, payload, wait, may_park = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
  local digest, grace = ARGV[7], ARGV[8]
  local previous, tried = ARGV[9] or '0', ARGV[10] or '0'
  if digest then
    -- A retry whose pair was decided: its answer, again.
    local role, waited, given = kept_answer(digest, payload)
    if role == 'reused' or role == 'withdrawn' then return {role} end
    if role == 'group' then return {'mismatch', string.match(given, '^(%d+)')} end
    if role then return {'kept', role, given, waited} end
  end
  local s = state()
  if s[8] then return {'mismatch', s[8]} end
  local k = keys(s)
  if s[1] and digest and k[1] == digest then
    -- The waiter's own retry, through this replica or another: it takes its
    -- place back, with its first try's deadline. A try still open elsewhere
    -- is told it was superseded, and an offer made to it comes here. Unless
    -- this is the older try: a cut try's arrival, still on its way through
    -- one replica, can reach Redis after its retry's through another.
    if not same_payload(s[2], payload) then return {'reused'} end
    if earlier(previous, tried, k[6], k[7]) then return {'superseded'} end
    if may_park ~= '1' then return {'full'} end
    publish(s[7], 'X' .. s[1] .. '\n' .. key)
    redis.call('HSET', key, 'w', token, 'wc', channel, 'wn', previous, 'wt', tried)
    if s[3] then publish(channel, 'O' .. token .. '\n' .. key) end
    local left = math.max(tonumber(redis.call('HGET', key, 'we')) - now_ms(), 0)
    -- A detached place expires with the grace; taken back, with the deadline.
    redis.call('PEXPIRE', key, int(left + SLACK_MS))
    return {'parked', int(left)}
  end
  if s[1] then
    -- Someone else is already pairing with the waiter: try again shortly.
    if s[3] then return {'busy'} end
    local listens = publish(s[7], 'O' .. s[1] .. '\n' .. key) > 0
    if listens then
      redis.call('HSET', key, 'o', token, 'oc', channel, 'op', payload, 'oe', int(now_ms() + wait))
      if digest then
        redis.call('HSET', key, 'ok', digest, 'og', grace, 'on', previous, 'ot', tried, 'ak', '1')
      end
      expire_within(wait + SLACK_MS)
      return {'offered'}
    end
    if k[1] and tonumber(redis.call('HGET', key, 'we')) > now_ms() then
      -- Nobody listens for the waiter, but it has an attempt key and its
      -- deadline has not passed: its replica is gone (killed, cut off, or
      -- shut down), and it will come back through another. Pair with it;
      -- its answer waits for it. This caller hears its own answer here, so
      -- nothing is sent to it.
      decide(s[2], payload, k[1], k[2], k[3], digest, grace)
      return {'second', s[2], '0'}
    end
    -- Nobody listens for the waiter: its replica is gone. Take its place.
    redis.call('DEL', key)
  end
  if may_park ~= '1' then return {'full'} end
  local now = now_ms()
  redis.call('HSET', key, 'w', token, 'wc', channel, 'wp', payload, 'we', int(now + wait))
  if digest then
    redis.call('HSET', key, 'wk', digest, 'wg', grace, 'ws', int(now), 'wn', previous, 'wt', tried,
      'ak', '1')
  end
  redis.call('PEXPIRE', key, int(wait + SLACK_MS))
  return {'parked'}
end

if op == 'accept' then
  local s = state()
  if s[1] == token and s[3] then
    local payload, waited = pair(s)
    if payload then return {'first', payload, waited} end
  end
  return {'none'}
end

if op == 'detach' then
  -- A replica shutting down lets go of its waiter with an attempt key,
  -- rather than take it out: the place stays for the grace (never past its
  -- deadline), for the retry through another replica to take back, and a
  -- partner that comes meanwhile pairs with it. An offer already made to it
  -- is accepted first.
  local s = state()
  if s[8] then
    -- A group's member: its completion, if one waits for it, is confirmed
    -- first; else its place is held for the grace, with nobody listening.
    local i, k = member_of(token)
    if not i or not redis.call('HGET', key, 'd' .. i) then return {'none'} end
    if s[3] then
      local answer = confirm(i, k)
      if answer then return answer end
    end
    local e = tonumber(redis.call('HGET', key, 'e' .. i))
    local now = now_ms()
    local hold = math.max(math.min(tonumber(redis.call('HGET', key, 'g' .. i)), e - now), 1)
    redis.call('HSET', key, 'c' .. i, '', 'h' .. i, int(now + hold))
    return {'detached'}
  end
  if s[1] ~= token then return {'none'} end
  if s[3] then
    local payload, waited = pair(s)
    if payload then return {'first', payload, waited} end
  end
  local k = keys(s)
  if not k[1] then return {'none'} end
  local left = tonumber(redis.call('HGET', key, 'we')) - now_ms()
  redis.call('HSET', key, 'w', '', 'wc', '')
  redis.call('PEXPIRE', key, int(math.max(math.min(tonumber(k[2]), left), 1)))
  return {'detached'}
end

local withdrawing = false
if op == 'withdraw' then
  -- A caller with an attempt key gave up. Its answer, if its wait was
  -- decided first; else its place (a pair's waiter or offerer, a group's
  -- member or completer) is taken out as `leave` takes out a caller that
  -- left, without accepting an offer, and its replica is told. Either way
  -- the withdrawal is kept for the grace, so that a try with the key still
  -- on its way is refused rather than parked.
  local digest, grace = ARGV[3], ARGV[4]
  local kept = redis.call('GET', key .. ':k:' .. digest)
  if kept then
    local sha = string.match(kept, '^(%x+)\n')
    if sha then kept = string.sub(kept, #sha + 2) end
    local role, waited, rest = string.match(kept, '^(%a+)\n(%d*)\n(.*)$')
    if role == 'withdrawn' then return {'withdrawn'} end
    if role == 'group' then
      local _, position, list = string.match(rest, '^(%d+)\n(%d+)\n(.*)$')
      return {'kept', 'group', position, list, waited}
    end
    return {'kept', role, rest, waited}
  end
  redis.call('SET', key .. ':k:' .. digest, 'withdrawn\n\n', 'PX', grace)
  local s = state()
  local found, channel
  if s[8] then
    local i = keyed_member(digest, tonumber(redis.call('HGET', key, 'k') or '0'))
    if i then
      found, channel = redis.call('HGET', key, 't' .. i), redis.call('HGET', key, 'c' .. i)
    elseif s[3] and redis.call('HGET', key, 'ok') == digest then
      found, channel = s[3], s[4]
    end
  else
    local k = keys(s)
    if s[1] and k[1] == digest then
      found, channel = s[1], s[7]
    elseif s[3] and k[4] == digest then
      found, channel = s[3], s[4]
    end
  end
  if not found then return {'unknown'} end
  publish(channel, 'W' .. found .. '\n' .. key)
  op, token, withdrawing = 'leave', found, true
end

if op == 'leave' then
  local can_accept = ARGV[3] == '1' and not withdrawing
  local s = state()
  if s[8] then
    local i, k = member_of(token)
    if i and s[3] and can_accept then
      -- The deadline came with a completion pending: if this member was all
      -- it waited for, the completion was first.
      local answer = confirm(i, k)
      if answer then return answer end
      i, k = member_of(token)
    end
    if i then
      if redis.call('HEXISTS', key, 'o') == 1 then k = withdraw_completion(k, true) end
      if remove_member(i, k) == 0 then redis.call('DEL', key) end
      return {'left'}
    end
    if s[3] == token then
      withdraw_completion(k, false)
      return {'left'}
    end
  end
  local answer = grouped(token)
  if answer then return answer end
  if s[1] == token then
    if s[3] then
      if can_accept then
        -- The deadline came with an offer pending: the offer was first.
        local payload, waited = pair(s)
        if payload then return {'first', payload, waited} end
      elseif publish(s[4], 'P' .. s[3] .. '\n' .. key) > 0 then
        -- The waiter left: its offerer takes its place, and its key.
        local k = keys(s)
        redis.call('HDEL', key, 'wk', 'wg', 'ws', 'wn', 'wt')
        redis.call('HSET', key, 'w', s[3], 'wc', s[4], 'wp', s[5], 'we', s[6])
        if k[4] then
          redis.call('HSET', key, 'wk', k[4], 'wg', k[5], 'ws', int(now_ms()), 'wn', k[8] or '0',
            'wt', k[9] or '0')
        end
        redis.call('HDEL', key, unpack(OFFER))
        redis.call('PEXPIRE', key, int(math.max(tonumber(s[6]) - now_ms(), 0) + SLACK_MS))
        return {'left'}
      end
    end
    redis.call('DEL', key)
    return {'left'}
  end
  if s[3] == token then
    redis.call('HDEL', key, unpack(OFFER))
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
