-- The collector's question: which tables showed no sign of life for the
-- retention, by the server's clock?
-- KEYS: 1 tables (ZSET)
-- ARGV: 1 retention ms, 2 the most tables to return
-- Returns {table, score, table, score, ...}, oldest first.
local retention, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if not retention or not limit then return redis.error_reply('svcwatch: catalog due: bad arguments') end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - retention), 'WITHSCORES', 'LIMIT', 0, limit)
