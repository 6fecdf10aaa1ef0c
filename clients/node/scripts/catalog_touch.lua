-- The catalog of tables: a sorted set, table -> server ms of its latest sign
-- of life, with a revision bumped when a table is added or removed, and a
-- channel that announces both. It lives in a slot of its own (hash tag: the
-- key prefix), so in a Cluster it is a second, idempotent call after the
-- table's own script.
-- KEYS: 1 tables (ZSET), 2 rev (STRING)
-- ARGV: 1 channel, 2 table, 3 at: server ms to record, or '' for now
-- Raises the table's score to at (never lowers it); a table new to the
-- catalog is announced: {"op":"add","table":T,"r":revision}.
-- Returns {1 if the table was added else 0, the catalog's revision}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local channel, tbl, at = ARGV[1], ARGV[2], tonumber(ARGV[3] or '') or now
if type(tbl) ~= 'string' or tbl == '' then return redis.error_reply('svcwatch: catalog touch: bad arguments') end
local score = redis.call('ZSCORE', KEYS[1], tbl)
if score then
  if tonumber(score) < at then redis.call('ZADD', KEYS[1], at, tbl) end
  return {0, tonumber(redis.call('GET', KEYS[2]) or 0) or 0}
end
redis.call('ZADD', KEYS[1], at, tbl)
local rev = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', channel, '{"op":"add","table":' .. cjson.encode(tbl) .. ',"r":' .. rev .. '}')
return {1, rev}
