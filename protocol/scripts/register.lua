-- ARGV: 5 id, 6 incarnation, 7 name, 8 desc, 9 ttl ms, 10 replace same name (1/0),
--       11 registered-at ms of this incarnation if it registered before (else 0),
--       so that registering again after Redis lost the entry changes nothing peers see,
--       12 record version (a token the caller makes per write; its heartbeat names it),
--       13 meta (a JSON object of strings, or ''), 14 state ('serving', 'draining', 'unhealthy')
-- Returns {'ok', registered-at ms} or {'dup', holder's name}.
local id, inc, name, desc, ttl, replace = ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10] == '1'
local ver, meta, state = ARGV[12], ARGV[13], ARGV[14]
if not validArgs(id, inc, ttl) or not tonumber(ARGV[11]) then return redis.error_reply('svcwatch: register: bad arguments') end
local old = redis.call('HGET', kInst, id)
local reg, op = now, 'add'
if tonumber(ARGV[11]) > 0 then reg = tonumber(ARGV[11]) end
if old then
  local o = decode(old)
  local deadline = tonumber(redis.call('ZSCORE', kExp, id) or 0) or 0
  if o.inc == inc then
    reg, op = tonumber(o.reg) or now, 'update'
  elseif deadline > now then
    if not (replace and o.name == name) then return {'dup', tostring(o.name or '')} end
    redis.call('HDEL', kInst, id)
    redis.call('ZREM', kExp, id)
    publish('del', id)
  else
    redis.call('HDEL', kInst, id)
    redis.call('ZREM', kExp, id)
    publish('expired', id)
  end
end
local rec = record(inc, ver, name, desc, meta, state, reg, ttl)
redis.call('HSET', kInst, id, rec)
redis.call('ZADD', kExp, now + ttl, id)
if rec ~= old then publish(op, id, rec) end
settle()
return {'ok', reg}
