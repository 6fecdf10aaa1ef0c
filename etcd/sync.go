package etcd

// sync.go: keeping the view of each watched table current. A source is one
// key range the watcher follows: a table watched by name (prefix/table/) or a
// watched prefix (prefix/p/, every table under it). Each runs on a sync
// goroutine of its own, owned by the running Start and ended by Stop,
// Unwatch or UnwatchPrefix: a range read, then a watch from the revision of
// that read (no gap), and a new read whenever etcd cancels the watch or it
// resumes at a compacted revision.
//
// A table may be followed by two sources at once (by name and under a
// prefix). Each view remembers the revision it is current at, and a read or
// an event older than that is skipped, so the two never step on each other.

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand"
	"sort"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svcwatch/svcwatch"
)

// view is the watcher's position in one table. Guarded by EtcdServiceWatcher.mu.
type view struct {
	rev    int64 // the store revision the view is current at
	loaded bool
}

// source is one key range the watcher follows.
type source struct {
	rng    string // the key range's prefix
	table  string // a table watched by name; "" for a prefix
	prefix string // a watched prefix; "" for a table

	ctx        context.Context
	cancel     context.CancelFunc
	done       chan struct{} // closed when the goroutine ends
	loaded     chan struct{} // closed at the first successful read
	loadedOnce sync.Once
	found      map[string]bool // a prefix's tables; guarded by EtcdServiceWatcher.mu
}

// errNotWatched ends a wait for a source that was stopped before its first read.
var errNotWatched = errors.New("svcwatch/etcd: no longer watched")

// waitLoaded waits for the source's first read.
func (s *source) waitLoaded(ctx context.Context) error {
	select {
	case <-s.loaded:
		return nil
	case <-s.done:
		select {
		case <-s.loaded:
			return nil
		default:
			return errNotWatched
		}
	case <-ctx.Done():
		return fmt.Errorf("svcwatch/etcd: read %s: %w", s.rng, ctx.Err())
	}
}

// namedSource returns the source of a table watched by name, starting it if
// needed. Caller holds mu.
func (w *EtcdServiceWatcher) namedSource(run *running, table string) *source {
	if s := w.named[table]; s != nil {
		return s
	}
	if w.views[table] == nil {
		w.views[table] = &view{}
	}
	s := w.newSource(run, w.keys.tableRange(table))
	s.table = table
	w.named[table] = s
	go w.runSource(run, s)
	return s
}

// prefixSource returns the source of a watched prefix, starting it if needed.
// Caller holds mu.
func (w *EtcdServiceWatcher) prefixSource(run *running, prefix string) *source {
	if s := w.prefixes[prefix]; s != nil {
		return s
	}
	s := w.newSource(run, w.keys.tableRange(prefix))
	s.prefix, s.found = prefix, make(map[string]bool)
	w.prefixes[prefix] = s
	go w.runSource(run, s)
	return s
}

func (w *EtcdServiceWatcher) newSource(run *running, rng string) *source {
	s := &source{rng: rng, done: make(chan struct{}), loaded: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(run.ctx)
	return s
}

// stopSource ends a source's goroutine and waits for it until ctx ends.
func stopSource(ctx context.Context, s *source) error {
	s.cancel()
	return waitDone(ctx, s.done, "sync of "+s.rng)
}

// waitSources waits for every source's goroutine (Stop has ended their
// contexts).
func (w *EtcdServiceWatcher) waitSources(ctx context.Context) error {
	w.mu.Lock()
	var all []*source
	for _, s := range w.named {
		all = append(all, s)
	}
	for _, s := range w.prefixes {
		all = append(all, s)
	}
	w.mu.Unlock()
	var errs []error
	for _, s := range all {
		errs = append(errs, stopSource(ctx, s))
	}
	return errors.Join(errs...)
}

// runSource reads the source's range and follows it until its context ends.
func (w *EtcdServiceWatcher) runSource(run *running, s *source) {
	defer close(s.done)
	for attempt := 0; ; {
		rev, err := w.load(run, s)
		if s.ctx.Err() != nil {
			return
		}
		if err != nil {
			if !w.b.Sleep(s.ctx, w.b.Backoff(attempt, 50*time.Millisecond, w.conf.KeepAlive)) {
				return
			}
			attempt++
			continue
		}
		attempt = 0
		s.loadedOnce.Do(func() { close(s.loaded) })
		err = w.follow(run, s, rev)
		if s.ctx.Err() != nil {
			return
		}
		w.log.Info("svcwatch/etcd: the watch ended; reading again", "range", s.rng, "reason", err)
		// Jittered, so that a cluster-wide event does not become a read storm.
		if !w.b.Sleep(s.ctx, time.Duration(mrand.Int63n(int64(min(w.conf.ScanInterval/2, time.Second))+1))) {
			return
		}
	}
}

// load reads the source's whole range and makes it the view of each of its
// tables; it returns the revision of the read.
func (w *EtcdServiceWatcher) load(run *running, s *source) (int64, error) {
	ctx, cancel := context.WithTimeout(s.ctx, w.loadTimeout())
	defer cancel()
	resp, err := w.cli.Get(ctx, s.rng, clientv3.WithPrefix())
	w.noteRoundTrip(err)
	if err != nil {
		return 0, fmt.Errorf("svcwatch/etcd: read %s: %w", s.rng, err)
	}
	w.b.CountFullLoad()
	byTable := make(map[string][]svcwatch.Instance)
	for _, kv := range resp.Kvs {
		table, id, ok := w.keys.split(string(kv.Key))
		if !ok || (s.table != "" && table != s.table) {
			continue // a table nested under this one has its own range
		}
		inst, err := w.b.DecodeRecord(table, id, string(kv.Value))
		if err != nil {
			w.logBadOnce(string(kv.Key), err)
			continue
		}
		byTable[table] = append(byTable[table], inst)
	}
	rev := resp.Header.Revision

	w.mu.Lock()
	if s.ctx.Err() != nil {
		w.mu.Unlock() // stopped: the view may be dropped already
		return 0, s.ctx.Err()
	}
	var applied []string
	if s.table != "" {
		w.applyLoadLocked(s.table, rev, byTable[s.table])
		applied = append(applied, s.table)
	} else {
		for t := range byTable {
			if w.b.Covers(t) {
				w.b.AddFoundTable(t)
				s.found[t] = true
			}
		}
		for t := range s.found {
			if !w.b.Watched(t) {
				delete(s.found, t)
				continue
			}
			w.applyLoadLocked(t, rev, byTable[t]) // a table gone from the range is now empty
			applied = append(applied, t)
		}
	}
	w.mu.Unlock()

	if self := w.Self(); !w.conf.WatchOnly && contains(applied, self.Table) {
		if inst, ok := w.Lookup(self.Table, self.ID); !ok || inst.Incarnation != self.Incarnation {
			w.selfChanged(run)
		}
	}
	return rev, nil
}

// applyLoadLocked makes insts the view of table as of revision rev, unless the
// view is newer already. Caller holds mu.
func (w *EtcdServiceWatcher) applyLoadLocked(table string, rev int64, insts []svcwatch.Instance) {
	v := w.views[table]
	if v == nil {
		v = &view{}
		w.views[table] = v
	}
	if v.loaded && rev < v.rev {
		return
	}
	v.rev, v.loaded = rev, true
	sort.Slice(insts, func(i, j int) bool { return insts[i].ID < insts[j].ID }) // events in a stable order
	w.b.ReplaceTable(table, insts, time.Time{})
}

// follow watches the source's range from revision rev+1 and applies every
// event until the watch ends; it returns why it ended.
func (w *EtcdServiceWatcher) follow(run *running, s *source, rev int64) error {
	ctx, cancel := context.WithCancel(watchCtx(s.ctx))
	defer cancel()
	for resp := range w.cli.Watch(ctx, s.rng, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		switch {
		case resp.CompactRevision != 0:
			return fmt.Errorf("changes up to revision %d were compacted", resp.CompactRevision)
		case resp.Err() != nil:
			return resp.Err()
		case resp.Canceled:
			return errors.New("canceled by etcd")
		case resp.IsProgressNotify():
			w.b.MarkSynced()
			continue
		}
		w.applyEvents(run, s, resp.Events)
	}
	return errors.New("the watch channel closed")
}

// applyEvents applies one watch response's events, in order.
func (w *EtcdServiceWatcher) applyEvents(run *running, s *source, evs []*clientv3.Event) {
	self := w.Self()
	selfHit := false
	w.mu.Lock()
	if s.ctx.Err() != nil {
		w.mu.Unlock()
		return
	}
	for _, ev := range evs {
		table, id, ok := w.keys.split(string(ev.Kv.Key))
		if !ok || (s.table != "" && table != s.table) {
			continue
		}
		rev := ev.Kv.ModRevision
		if s.prefix != "" && !s.found[table] {
			if !w.b.Covers(table) {
				continue
			}
			w.b.AddFoundTable(table)
			s.found[table] = true
		}
		v := w.views[table]
		if v == nil {
			if s.prefix == "" {
				continue // dropped
			}
			// A table that appeared under a watched prefix: it was empty
			// when the prefix was read, and this is its first change since.
			v = &view{rev: rev - 1, loaded: true}
			w.views[table] = v
			w.b.ReplaceTable(table, nil, time.Time{})
		}
		if !v.loaded || rev <= v.rev {
			continue // the view has it already (another source got there first)
		}
		v.rev = rev
		isSelf := !w.conf.WatchOnly && table == self.Table && id == self.ID
		switch ev.Type {
		case clientv3.EventTypePut:
			inst, err := w.b.DecodeRecord(table, id, string(ev.Kv.Value))
			if err != nil {
				w.logBadOnce(string(ev.Kv.Key), err)
				w.b.RemoveInstance(table, id, time.Time{}) // as a read would: absent
			} else {
				w.b.PutInstance(inst)
			}
			selfHit = selfHit || (isSelf && inst.Incarnation != self.Incarnation)
		case clientv3.EventTypeDelete:
			w.b.RemoveInstance(table, id, time.Time{})
			selfHit = selfHit || isSelf
		}
	}
	w.b.MarkSynced()
	w.mu.Unlock()
	if selfHit {
		w.selfChanged(run)
	}
}

// dropLocked forgets the view of a table no longer watched: OnRemove is
// queued for each of its peers. Caller holds mu.
func (w *EtcdServiceWatcher) dropLocked(table string) {
	delete(w.views, table)
	w.b.DropTable(table)
}

// logBadOnce logs an unreadable record once per key.
func (w *EtcdServiceWatcher) logBadOnce(key string, err error) {
	if w.b.LogOnce(key) {
		w.log.Error("svcwatch/etcd: skipping an unreadable record", "key", key, "err", err)
	}
}

// watchCtx marks ctx for watches that end when the member loses its leader
// (a partitioned member would otherwise serve a silent, stale watch). The
// watches and the progress requests of a watcher share this metadata, so
// they share one gRPC stream.
func watchCtx(ctx context.Context) context.Context { return clientv3.WithRequireLeader(ctx) }

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
