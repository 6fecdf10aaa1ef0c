package watchertest

// recorder.go: the handler each watcher of the suite gets. It keeps every
// event and notices what the contract forbids: overlapping calls, events about
// self, and calls after Stop returned.

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/svcwatch/svcwatch"
)

// event is one handler call.
type event struct {
	op   string // "add", "update", "remove"
	inst svcwatch.Instance
	old  svcwatch.Instance // update only
}

func (e event) String() string {
	s := e.op + " " + e.inst.Key() + "@" + short(e.inst.Incarnation)
	if e.op == "update" {
		s += fmt.Sprintf(" (desc %q state %s)", e.inst.Desc, e.inst.State)
	}
	return s
}

func short(inc string) string {
	if len(inc) > 6 {
		return inc[:6]
	}
	return inc
}

// recorder is a svcwatch.Handler that keeps what it was told.
type recorder struct {
	selfKey string // "" for a watch-only watcher

	mu         sync.Mutex
	evs        []event
	inCall     bool
	overlapped bool
	aboutSelf  []event
	stopped    bool // Stop returned
	afterStop  []event
}

func (r *recorder) note(e event) {
	r.mu.Lock()
	if r.inCall {
		r.overlapped = true
	}
	r.inCall = true
	if r.selfKey != "" && e.inst.Key() == r.selfKey {
		r.aboutSelf = append(r.aboutSelf, e)
	}
	if r.stopped {
		r.afterStop = append(r.afterStop, e)
	}
	r.evs = append(r.evs, e)
	r.mu.Unlock()
	time.Sleep(50 * time.Microsecond) // widen the window in which an overlap would show
	r.mu.Lock()
	r.inCall = false
	r.mu.Unlock()
}

func (r *recorder) OnAdd(inst svcwatch.Instance) { r.note(event{op: "add", inst: inst}) }
func (r *recorder) OnUpdate(old, cur svcwatch.Instance) {
	r.note(event{op: "update", inst: cur, old: old})
}
func (r *recorder) OnRemove(inst svcwatch.Instance) { r.note(event{op: "remove", inst: inst}) }

// markStopped records that Stop returned: any later call is a breach.
func (r *recorder) markStopped() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
}

func (r *recorder) events() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event(nil), r.evs...)
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.evs)
}

// about returns the events about instance id of table, in order.
func (r *recorder) about(table, id string) []event {
	var out []event
	for _, e := range r.events() {
		if e.inst.Table == table && e.inst.ID == id {
			out = append(out, e)
		}
	}
	return out
}

// known returns the IDs of table that the handler was last told are there
// (an add or update not followed by a remove), sorted and comma-joined.
func (r *recorder) known(table string) string {
	last := map[string]string{}
	for _, e := range r.events() {
		if e.inst.Table == table {
			last[e.inst.ID] = e.op
		}
	}
	var ids []string
	for id, op := range last {
		if op != "remove" {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return strings.Join(ids, ",")
}

// has reports whether an event op about table/id was recorded.
func (r *recorder) has(op, table, id string) bool {
	return r.count(op, table, id) > 0
}

func (r *recorder) count(op, table, id string) int {
	n := 0
	for _, e := range r.about(table, id) {
		if e.op == op {
			n++
		}
	}
	return n
}

func (r *recorder) String() string {
	var s []string
	for _, e := range r.events() {
		s = append(s, e.String())
	}
	if len(s) == 0 {
		return "(no events)"
	}
	return strings.Join(s, ", ")
}

// breaches describes what the recorder saw that the contract forbids.
func (r *recorder) breaches() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	if r.overlapped {
		out = append(out, "handler calls overlapped")
	}
	for _, e := range r.aboutSelf {
		out = append(out, "an event about self: "+e.String())
	}
	for _, e := range r.afterStop {
		out = append(out, "a handler call after Stop returned: "+e.String())
	}
	return out
}
