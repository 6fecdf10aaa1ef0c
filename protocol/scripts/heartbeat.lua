-- ARGV: 5 id, 6 incarnation, 7 ttl ms, 8 the record version the caller wrote last
--       ('' skips that check)
-- Returns 'ok', 'missing' (register again), 'replaced' (stand down) or 'stale'
-- (the stored record is not the version the caller wrote last, e.g. a failover
-- lost the latest write: write it again). The deadline is refreshed on 'ok' and
-- 'stale'.
local id, inc, ttl, ver = ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8] or ''
if not validArgs(id, inc, ttl) then return redis.error_reply('svcwatch: heartbeat: bad arguments') end
local rec = redis.call('HGET', kInst, id)
if not rec then return 'missing' end
if not owns(rec, inc) then return 'replaced' end
redis.call('ZADD', kExp, now + ttl, id)
local p = '{"inc":' .. cjson.encode(inc) .. ',"ver":' .. cjson.encode(ver) .. ','
if ver ~= '' and string.sub(rec, 1, #p) ~= p then return 'stale' end
return 'ok'
