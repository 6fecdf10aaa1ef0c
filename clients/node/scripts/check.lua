-- The scan's cheap question: has the table moved? Returns {epoch, revision,
-- token of the latest change}. Runs the prelude too, so watchers reap a table
-- whose heartbeaters all died.
return {redis.call('GET', kEpoch) or '', tonumber(redis.call('GET', kRev) or 0) or 0,
  redis.call('HGET', kMeta, 'tok') or ''}
