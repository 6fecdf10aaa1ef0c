-- ARGV: 5 id, 6 incarnation, 7 ttl ms
-- Returns 'ok', 'missing' (register again) or 'replaced' (stand down).
local id, inc, ttl = ARGV[5], ARGV[6], tonumber(ARGV[7])
local rec = redis.call('HGET', kInst, id)
if not rec then return 'missing' end
if not owns(rec, inc) then return 'replaced' end
redis.call('ZADD', kExp, now + ttl, id)
return 'ok'
