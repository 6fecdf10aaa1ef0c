-- The collection of an emptied table. Callers pass a silence (ARGV 2) that
-- never elapses (2^40 ms), so the mass-expiry guard never acts here: a table
-- is a candidate only when nothing touched it in the catalog for the
-- retention, so its expired entries are dead, not frozen out. And a large
-- reap limit (ARGV 3), so the prelude reaps what nobody heartbeats or watches
-- any more.
-- ARGV: 5 retention ms
-- Returns {'gone'} (the table has no keys), {'live'} (an instance's deadline
-- is ahead), {'reaping'} (expired entries are left for the next call),
-- {'empty', since ms} (no record since then, less than the retention ago) or
-- {'collected'} (no record for the retention or longer: every key of the table
-- was deleted, in this one call, so no registration can be lost to it).
local retention = tonumber(ARGV[5])
if not retention or retention <= 0 then return redis.error_reply('svcwatch: gc: bad arguments') end
if not present then return {'gone'} end
if redis.call('ZCOUNT', kExp, '(' .. now, '+inf') > 0 then return {'live'} end
if redis.call('HLEN', kInst) > 0 then return {'reaping'} end
local since = tonumber(redis.call('HGET', kMeta, 'empty') or '') or now
if now - since < retention then return {'empty', since} end
redis.call('DEL', kInst, kExp, kRev, kEpoch, kMeta)
return {'collected'}
