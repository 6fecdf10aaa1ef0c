// The errors of the watcher, mirroring the Go library's ErrInvalid,
// ErrDuplicateID, ErrStopped and ErrReplaced: test with instanceof or err.code.

export class SvcwatchError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

// InvalidError: a bad argument or option. problems lists every one found
// (the constructor reports all of them at once, like Go's errors.Join).
export class InvalidError extends SvcwatchError {
  constructor(problems) {
    problems = [].concat(problems);
    super('ERR_INVALID', problems.map((p) => 'svcwatch: invalid argument: ' + p).join('\n'));
    this.problems = problems;
  }
}

// DuplicateIDError: another live incarnation with a different name holds the ID.
export class DuplicateIDError extends SvcwatchError {
  constructor(detail) { super('ERR_DUPLICATE_ID', 'svcwatch: duplicate id: ' + detail); }
}

// StoppedError: the watcher was stopped.
export class StoppedError extends SvcwatchError {
  constructor() { super('ERR_STOPPED', 'svcwatch: watcher stopped'); }
}

// ReplacedError: a newer incarnation of the same ID took the registration over.
export class ReplacedError extends SvcwatchError {
  constructor(detail) { super('ERR_REPLACED', 'svcwatch: registration replaced by another incarnation: ' + detail); }
}
