-- Shared head of every svcwatch script. All keys are of one table and carry its
-- hash tag, so they live in one Cluster slot.
-- KEYS: 1 inst (HASH id -> record), 2 exp (ZSET id -> deadline ms), 3 rev, 4 epoch,
--       5 meta (HASH: last = server ms of the latest call, guard = of the latest guard,
--       tok = the token of the latest change, n = the number of records,
--       empty = server ms since when the table has had no record)
-- ARGV: 1 channel, 2 silence ms (half the caller's TTL), 3 reap limit,
--       4 a fresh random token: the epoch if the table needs a new one, and the
--       stem of this call's change tokens
--
-- Every script first makes the table whole: no write may fail halfway (Redis
-- does not roll a script back), and data lost without a published change (an
-- eviction, a stray DEL or ZREM) must not leave watchers wrong for good.
local kInst, kExp, kRev, kEpoch, kMeta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local channel, silence, reapLimit, epochCand = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- validArgs reports whether a script's own arguments can be written: an id,
-- an incarnation and a TTL that is a positive whole number of ms. A script
-- checks them before it writes anything of its own, and answers an error
-- reply instead of storing a record no reader accepts.
local function validArgs(id, inc, ttl)
  return type(id) == 'string' and id ~= '' and type(inc) == 'string' and inc ~= '' and
    ttl ~= nil and ttl > 0 and ttl == math.floor(ttl)
end

local function decode(rec)
  local ok, r = pcall(cjson.decode, rec)
  if ok and type(r) == 'table' then return r end
  return {}
end

-- A record's own TTL, or twice the silence (the caller's TTL) if it has none,
-- at most a day (the collection passes a silence that never elapses).
local function ttlOf(rec)
  local ttl = tonumber(decode(rec or '').ttl)
  if ttl and ttl > 0 then return ttl end
  return math.min(2 * silence, 86400000)
end

-- Repair. A key of the wrong type or a revision that is not an integer is
-- dropped; records without a deadline get one TTL (a live owner heartbeats on,
-- a dead one is reaped); deadlines without a record go; a record count that
-- disagrees with the records shows keys that vanished. Each of these means the
-- table lost data outside the protocol, so it gets a new epoch: every watcher
-- reads it again and holds removals back for one TTL, and every live owner
-- finds its registration missing and registers again.
local damaged = false
do
  -- read calls a read command; a key of the wrong type answers an error, and
  -- is dropped (then read again: absent).
  local function read(cmd, key, ...)
    local r = redis.pcall(cmd, key, ...)
    if type(r) == 'table' and r.err then
      redis.call('DEL', key)
      damaged = true
      r = redis.call(cmd, key, ...)
    end
    return r
  end
  local nInst, nExp = read('HLEN', kInst), read('ZCARD', kExp)
  local n = tonumber(read('HGET', kMeta, 'n') or '')
  local rev = read('GET', kRev)
  if rev and not string.match(rev, '^%d+$') then
    redis.call('DEL', kRev)
    damaged = true
  end
  read('GET', kEpoch)
  if nInst ~= nExp or (n ~= nil and n ~= nInst) then
    local all = redis.call('HGETALL', kInst)
    for i = 1, #all, 2 do
      if not redis.call('ZSCORE', kExp, all[i]) then
        redis.call('ZADD', kExp, now + ttlOf(all[i + 1]), all[i])
      end
    end
    local ids = redis.call('ZRANGE', kExp, 0, -1)
    for _, id in ipairs(ids) do
      if redis.call('HEXISTS', kInst, id) == 0 then redis.call('ZREM', kExp, id) end
    end
    damaged = true
  end
  if damaged then
    redis.call('SET', kEpoch, epochCand)
    redis.log(redis.LOG_WARNING, 'svcwatch: table ' .. kInst .. ' had lost or damaged data; repaired under a new epoch')
  end
end

-- present: the table has keys. A table that has none (never written, or
-- collected) is left without any: reading it writes nothing.
local present = redis.call('EXISTS', kInst, kExp, kRev, kEpoch, kMeta) > 0

local function epoch()
  local e = redis.call('GET', kEpoch)
  if not e then
    redis.call('SET', kEpoch, epochCand)
    e = epochCand
  end
  return e
end

-- settle records the number of records, which the repair above checks, and
-- since when the table has had none (the catalog's collection reads it).
local function settle()
  local n = redis.call('HLEN', kInst)
  if n > 0 then
    redis.call('HSET', kMeta, 'n', n)
    redis.call('HDEL', kMeta, 'empty')
  elseif redis.call('EXISTS', kRev, kEpoch, kMeta) > 0 then
    redis.call('HSET', kMeta, 'n', 0)
    redis.call('HSETNX', kMeta, 'empty', now)
  end
end

-- publish bumps the revision and tells the watchers about one change. Each
-- change also gets a unique token and names the token of the change before it,
-- so a watcher notices a history that was rolled back and rewritten under the
-- same epoch (a failover to a replica that missed the latest writes), which
-- revision numbers alone would hide.
local function publish(op, id, rec)
  local rev = redis.call('INCR', kRev)
  local prev = redis.call('HGET', kMeta, 'tok') or ''
  local tok = epochCand .. '.' .. rev
  redis.call('HSET', kMeta, 'tok', tok)
  local msg = '{"e":' .. cjson.encode(epoch()) .. ',"r":' .. rev .. ',"p":' .. cjson.encode(prev) ..
    ',"t":' .. cjson.encode(tok) .. ',"op":"' .. op .. '","id":' .. cjson.encode(id)
  if rec then msg = msg .. ',"rec":' .. cjson.encode(rec) end
  redis.call('PUBLISH', channel, msg .. '}')
  return rev
end

-- record builds the stored JSON. The incarnation comes first and the record's
-- version second, so that the heartbeat checks both with a prefix compare
-- instead of decoding the record. meta is a JSON object of strings as the
-- caller encoded it ('' or anything that is not a JSON object: none); state is
-- 'draining' or 'unhealthy' ('' or 'serving': none, serving).
local function record(inc, ver, name, desc, meta, state, reg, ttl)
  local r = '{"inc":' .. cjson.encode(inc) .. ',"ver":' .. cjson.encode(ver) .. ',"name":' .. cjson.encode(name) ..
    ',"desc":' .. cjson.encode(desc)
  if meta and meta ~= '' and meta ~= '{}' then
    local ok, m = pcall(cjson.decode, meta)
    if ok and type(m) == 'table' and string.sub(meta, 1, 1) == '{' then r = r .. ',"meta":' .. meta end
  end
  if state and state ~= '' and state ~= 'serving' then r = r .. ',"state":' .. cjson.encode(state) end
  return r .. ',"reg":' .. reg .. ',"ttl":' .. ttl .. '}'
end

local function owns(rec, inc)
  local p = '{"inc":' .. cjson.encode(inc) .. ','
  return rec ~= false and string.sub(rec, 1, #p) == p
end

-- The mass-expiry guard: a table that no script touched for longer than the
-- silence (Redis frozen or unreachable to everyone) may hold only stale
-- deadlines. Instead of reaping, push every deadline to now + that instance's
-- TTL, at most once per 2 x silence, so the live ones can heartbeat again and
-- the dead ones are reaped one TTL later.
local guarded = false
if present then
  local last = tonumber(redis.call('HGET', kMeta, 'last') or 0) or 0
  redis.call('HSET', kMeta, 'last', now)
  if last > 0 and now - last > silence then
    local g = tonumber(redis.call('HGET', kMeta, 'guard') or 0) or 0
    if now - g >= 2 * silence then
      local all = redis.call('ZRANGE', kExp, 0, -1, 'WITHSCORES')
      for i = 1, #all, 2 do
        local ttl = ttlOf(redis.call('HGET', kInst, all[i]))
        if tonumber(all[i + 1]) < now + ttl then
          redis.call('ZADD', kExp, now + ttl, all[i])
        end
      end
      redis.call('HSET', kMeta, 'guard', now)
      guarded = true
    end
  end
end

-- Reap a few expired entries of this table; the heartbeat carries this, so
-- reaping costs no round trip of its own.
if present and not guarded then
  local ids = redis.call('ZRANGEBYSCORE', kExp, '-inf', now, 'LIMIT', 0, reapLimit)
  for _, id in ipairs(ids) do
    redis.call('ZREM', kExp, id)
    if redis.call('HDEL', kInst, id) == 1 then publish('expired', id) end
  end
end
settle()
