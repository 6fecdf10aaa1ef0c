-- ARGV: 5 id, 6 incarnation, 7 name, 8 desc, 9 ttl ms, 10 record version,
--       11 meta (a JSON object of strings, or ''), 12 state ('serving', 'draining', 'unhealthy')
-- Writes the caller's whole record (and refreshes its deadline).
-- Returns 'ok', 'missing' or 'replaced'.
local id, inc, name, desc, ttl, ver = ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10]
local meta, state = ARGV[11], ARGV[12]
if not validArgs(id, inc, ttl) then return redis.error_reply('svcwatch: update: bad arguments') end
local old = redis.call('HGET', kInst, id)
if not old then return 'missing' end
if not owns(old, inc) then return 'replaced' end
local rec = record(inc, ver, name, desc, meta, state, tonumber(decode(old).reg) or now, ttl)
redis.call('HSET', kInst, id, rec)
redis.call('ZADD', kExp, now + ttl, id)
if rec ~= old then publish('update', id, rec) end
return 'ok'
