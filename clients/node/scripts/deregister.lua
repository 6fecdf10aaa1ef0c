-- ARGV: 5 id, 6 incarnation. Removes the entry only if this incarnation owns it.
-- Returns 1 when removed, 0 otherwise.
local id, inc = ARGV[5], ARGV[6]
if not owns(redis.call('HGET', kInst, id), inc) then return 0 end
redis.call('HDEL', kInst, id)
redis.call('ZREM', kExp, id)
publish('del', id)
settle()
return 1
