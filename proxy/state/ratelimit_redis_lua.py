"""The Lua scripts of `RedisRateLimitState` (`ratelimit_redis.py` says what they guarantee).

ACQUIRE computes a refused claim's wait with the same lower bound as `slot_wait` in `ratelimit.py`; one
table of cases (tests/test_ratelimit_wait.py) holds both forms to the same answers.

Each runs atomically in Redis. Times are seconds on Redis' own clock (TIME), so every replica agrees on
when a slot frees; `now` is passed only by tests that drive a manual clock. Numbers that are not
integers come back as strings: Redis would truncate a Lua number in its reply.
"""

LIB = """
local server_now  -- read once per script call: every decision of a batch is stamped the same
local function clock(given)  -- '' means Redis' own clock, the one every replica shares
  if given ~= '' then return tonumber(given) end
  if not server_now then
    local t = redis.call('TIME')
    server_now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  return server_now
end
local function add(key, score, ticket, count, lifetime)  -- `count` slots named ticket#1..count
  local args = {}
  for j = 1, count do args[2 * j - 1] = score; args[2 * j] = ticket .. '#' .. j end
  redis.call('ZADD', key, unpack(args))
  local ms = math.ceil(lifetime * 1000) + 1000  -- the key outlives its last slot, then vanishes
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
local function num(x) if x == math.huge then return 'inf' end return string.format('%.6f', x) end
"""

# KEYS: per claim its in-flight set, held set, cool-down. ARGV: now, ticket, in-flight expiry, then per
# claim limit, hold, cost, ahead, enforce ('1'; '0': a shadow rule's claim, which always fits, and whose
# wait is the one it would have needed). -> {admitted, now, per claim: used, wait, cooling, clear}
ACQUIRE_BODY = """
local now, ticket, expiry, n = clock(ARGV[1]), ARGV[2], tonumber(ARGV[3]), #KEYS / 3
local fits, used, cooling = true, {}, {}
local room = {}
for i = 1, n do
  local a = 3 + 5 * (i - 1)
  redis.call('ZREMRANGEBYSCORE', KEYS[3 * i - 2], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[3 * i - 1], '-inf', now)
  used[i] = redis.call('ZCARD', KEYS[3 * i - 2]) + redis.call('ZCARD', KEYS[3 * i - 1])
  cooling[i] = math.max(0, (tonumber(redis.call('GET', KEYS[3 * i])) or 0) - now)
  local needs = used[i] + tonumber(ARGV[a + 4]) + tonumber(ARGV[a + 3])
  room[i] = cooling[i] == 0 and needs <= tonumber(ARGV[a + 1])
  if not room[i] and ARGV[a + 5] == '1' then fits = false end
end
local reply = {fits and 1 or 0, num(now)}
for i = 1, n do
  local flying, held, a = KEYS[3 * i - 2], KEYS[3 * i - 1], 3 + 5 * (i - 1)
  local limit, hold = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local cost, ahead = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local wait = 0
  if room[i] or (fits and ARGV[a + 5] == '1') then
    wait = 0
  elseif cost > limit then
    wait = math.huge  -- can never fit: the exchange would refuse it too
  else  -- the same lower bound as slot_wait in ratelimit.py
    local needed = ahead + cost + math.max(0, used[i] - limit)
    local index, rounds = (needed - 1) % limit, math.floor((needed - 1) / limit)
    local free, first = math.max(0, limit - used[i]), now
    if index >= free then
      first = now + hold  -- a slot in flight frees at least one hold from now
      local release = redis.call('ZRANGE', held, index - free, index - free, 'WITHSCORES')
      if release[2] then first = tonumber(release[2]) end
    end
    wait = math.max(first + rounds * hold - now, cooling[i], 0)
  end
  if fits then
    add(flying, now + hold + expiry, ticket, cost, hold + expiry)
    used[i] = used[i] + cost
  end
  local clear, last = 0, redis.call('ZRANGE', held, -1, -1, 'WITHSCORES')
  if last[2] then clear = tonumber(last[2]) - now end
  if redis.call('ZCARD', flying) > 0 then clear = math.max(clear, hold) end
  for _, value in ipairs({used[i], num(wait), num(cooling[i]), num(clear)}) do reply[#reply + 1] = value end
end
return reply
"""
ACQUIRE = LIB + ACQUIRE_BODY

# KEYS: per claim its in-flight set and held set. ARGV: now, then per claim ticket, cost, hold left
# (many answered requests in one call).
RELEASE = (
    LIB
    + """
local now = clock(ARGV[1])
for i = 1, #KEYS / 2 do
  local a = 1 + 3 * (i - 1)
  local ticket, cost, hold, names = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), {}
  for j = 1, cost do names[j] = ticket .. '#' .. j end
  redis.call('ZREM', KEYS[2 * i - 1], unpack(names))
  if hold > 0 then add(KEYS[2 * i], now + hold, ticket, cost, hold) end
end
return 1
"""
)

# KEYS: cool-down keys. ARGV: now, then per key the seconds it stays full.
COOL_DOWN = (
    LIB
    + """
local now = clock(ARGV[1])
for i = 1, #KEYS do
  local seconds = tonumber(ARGV[1 + i])
  if seconds > 0 and now + seconds > (tonumber(redis.call('GET', KEYS[i])) or 0) then
    redis.call('SET', KEYS[i], string.format('%.6f', now + seconds), 'PX', math.ceil(seconds * 1000))
  end
end
return 1
"""
)

# KEYS: per entry a sorted set to add to and the scope's other set. ARGV: now, then per entry: ticket,
# slots, seconds held from now, and whether only if the scope is gone from Redis (slots first seen there
# come back only if Redis lost them in a restart).
HAND_OVER = (
    LIB
    + """
local now = clock(ARGV[1])
for i = 1, #KEYS / 2 do
  local a = 1 + 4 * (i - 1)
  local seconds, target = tonumber(ARGV[a + 3]), KEYS[2 * i - 1]
  if seconds > 0 and (ARGV[a + 4] == '0' or redis.call('EXISTS', target, KEYS[2 * i]) == 0) then
    add(target, now + seconds, ARGV[a + 1], tonumber(ARGV[a + 2]), seconds)
  end
end
return 1
"""
)

# KEYS: one scope's in-flight set, held set, cool-down. ARGV: now, ticket base, in-flight expiry, hold,
# slots wanted, ceiling. Takes up to `wanted` slots ahead of the requests that will use them (a lease,
# `ratelimit_leases.py`), each its own ticket `<base>.<j>`, only while the scope is not cooling and stays
# at or under `ceiling` slots used. -> {slots granted, used before, cooling}
LEASE = (
    LIB
    + """
local flying, held = KEYS[1], KEYS[2]
local now, base, expiry, hold = clock(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', flying, '-inf', now)
redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
local used = redis.call('ZCARD', flying) + redis.call('ZCARD', held)
local cooling = math.max(0, (tonumber(redis.call('GET', KEYS[3])) or 0) - now)
local grant = 0
if cooling == 0 then grant = math.max(0, math.min(tonumber(ARGV[5]), tonumber(ARGV[6]) - used)) end
if grant > 0 then
  local args = {}
  for j = 1, grant do args[2 * j - 1] = now + hold + expiry; args[2 * j] = base .. '.' .. j .. '#1' end
  redis.call('ZADD', flying, unpack(args))
  local ms = math.ceil((hold + expiry) * 1000) + 1000
  if redis.call('PTTL', flying) < ms then redis.call('PEXPIRE', flying, ms) end
end
return {grant, used, num(cooling)}
"""
)
