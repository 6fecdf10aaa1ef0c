-- A full, atomic read: {epoch, revision, server ms, {id, record, deadline, ...},
-- token of the latest change} with only the entries whose deadline is ahead.
local live = redis.call('ZRANGEBYSCORE', kExp, '(' .. now, '+inf', 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  local rec = redis.call('HGET', kInst, live[i])
  if rec then
    out[#out + 1] = live[i]
    out[#out + 1] = rec
    out[#out + 1] = live[i + 1]
  end
end
return {redis.call('GET', kEpoch) or '', tonumber(redis.call('GET', kRev) or 0) or 0, now, out,
  redis.call('HGET', kMeta, 'tok') or ''}
