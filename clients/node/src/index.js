// svcwatch for Node.js: service discovery on Redis, interoperable with the Go
// library github.com/svcwatch/svcwatch (same keys, records, messages and
// scripts; Pick agrees to the bit).
export { Watcher } from './watcher.js';
export { SvcwatchError, InvalidError, DuplicateIDError, StoppedError, ReplacedError } from './errors.js';
export { hash32, weight, buildRoute, pickRoute, pickNRoute } from './pick.js';
export { tableKeys, catalogKeys } from './protocol.js';
