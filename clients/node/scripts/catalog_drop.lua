-- Removes a collected (or vanished) table from the catalog, unless a sign of
-- life came after the collector read its score: a registration in between
-- raised the score, and the table stays.
-- KEYS: 1 tables (ZSET), 2 rev (STRING)
-- ARGV: 1 channel, 2 table, 3 the score the collector read
-- Announces {"op":"del","table":T,"r":revision}. Returns 1 when removed, else 0.
local channel, tbl, seen = ARGV[1], ARGV[2], tonumber(ARGV[3] or '')
if type(tbl) ~= 'string' or tbl == '' or not seen then return redis.error_reply('svcwatch: catalog drop: bad arguments') end
local score = tonumber(redis.call('ZSCORE', KEYS[1], tbl) or '')
if not score or score > seen then return 0 end
redis.call('ZREM', KEYS[1], tbl)
local rev = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', channel, '{"op":"del","table":' .. cjson.encode(tbl) .. ',"r":' .. rev .. '}')
return 1
