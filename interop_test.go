package svcwatch

// interop_test.go: the Go library and the Node.js client (clients/node) on one
// real redis-server. Node watchers run in child processes
// (clients/node/test/interop-peer.js), driven over stdin/stdout with JSON
// lines. Both directions are checked: adds, Desc/Meta/State updates, clean
// stops, a killed Node process and a crashed Go watcher expiring at the
// other side, an empty Redis restart with nothing falsely removed, and both
// languages picking the same owners.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcwatch/svcwatch/internal/redistest"
	"github.com/svcwatch/svcwatch/protocol"
)

// requireNodeClient returns the directory of the Node.js client, or skips t
// (fails it with SVCWATCH_REQUIRE_REDIS=1) when node or the client's
// node_modules are missing.
func requireNodeClient(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("clients", "node"))
	if err != nil {
		t.Fatal(err)
	}
	missing := func(msg string) {
		if os.Getenv(redistest.RequireEnv) == "1" {
			t.Fatalf("%s (%s=1)", msg, redistest.RequireEnv)
		}
		t.Skip(msg)
	}
	if _, err := exec.LookPath("node"); err != nil {
		missing("node is not on PATH: the Go-Node interop tests need Node.js (20, or 18.19 as Debian 12 ships it)")
	}
	out, err := exec.Command("node", "-p", "process.versions.node").Output()
	if major, _ := strconv.Atoi(strings.Split(string(out), ".")[0]); err != nil || major < 18 {
		missing(fmt.Sprintf("the Go-Node interop tests need Node.js 18.19 or later (node says %q, %v)", bytes.TrimSpace(out), err))
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "redis", "package.json")); err != nil {
		missing("clients/node/node_modules is missing: run `npm ci` in clients/node first")
	}
	return dir
}

// nodeInst is an Instance as the Node client hands it out.
type nodeInst struct {
	Table        string            `json:"table"`
	ID           string            `json:"id"`
	Name         string            `json:"name"`
	Desc         string            `json:"desc"`
	Meta         map[string]string `json:"meta"`
	State        string            `json:"state"`
	Incarnation  string            `json:"incarnation"`
	RegisteredAt int64             `json:"registeredAt"`
}

// diff describes how n differs from in ("" when they are the same instance).
func (n nodeInst) diff(in Instance) string {
	meta := in.Meta
	if meta == nil {
		meta = map[string]string{}
	}
	if n.Meta == nil {
		n.Meta = map[string]string{}
	}
	got := fmt.Sprintf("%s %s %s %q %v %s %s %d", n.Table, n.ID, n.Name, n.Desc, n.Meta, n.State, n.Incarnation, n.RegisteredAt)
	want := fmt.Sprintf("%s %s %s %q %v %s %s %d", in.Table, in.ID, in.Name, in.Desc, meta, in.State, in.Incarnation, in.RegisteredAt.UnixMilli())
	if got == want && maps.Equal(n.Meta, meta) {
		return ""
	}
	return fmt.Sprintf("node has %s, go has %s", got, want)
}

// nodeMsg is one line from the peer: a reply or an event.
type nodeMsg struct {
	ID     int             `json:"id"`
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Name, Code, Message string
	} `json:"error"`
	Event string    `json:"event"` // add, update, remove, registrationLost
	W     string    `json:"w"`     // the watcher it is about
	Inst  nodeInst  `json:"inst"`
	Old   *nodeInst `json:"old"`
	Code  string    `json:"code"`
}

// nodePeer is one Node.js process running watchers.
type nodePeer struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	stderr   syncBuffer
	readDone chan struct{}
	killed   bool

	mu     sync.Mutex
	next   int
	waits  map[int]chan nodeMsg
	events []nodeMsg
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startNodePeer(t *testing.T, dir, addr string) *nodePeer {
	t.Helper()
	p := &nodePeer{readDone: make(chan struct{}), waits: make(map[int]chan nodeMsg)}
	p.cmd = exec.Command("node", "test/interop-peer.js", "redis://"+addr)
	p.cmd.Dir = dir
	p.cmd.Stderr = &p.stderr
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go p.read(stdout)
	t.Cleanup(func() { p.close(t) })
	return p
}

func (p *nodePeer) read(r io.Reader) {
	defer close(p.readDone)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var m nodeMsg
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			fmt.Fprintf(&p.stderr, "unreadable line from the peer: %s\n", sc.Bytes())
			continue
		}
		p.mu.Lock()
		if m.Event != "" {
			p.events = append(p.events, m)
		} else if ch := p.waits[m.ID]; ch != nil {
			delete(p.waits, m.ID)
			ch <- m
		}
		p.mu.Unlock()
	}
}

// call sends a command and returns its result; a failed command fails t.
func (p *nodePeer) call(t *testing.T, req map[string]any, result any) {
	t.Helper()
	if m := p.try(t, req); !m.OK {
		t.Fatalf("node %v: %+v\nstderr: %s", req["cmd"], m.Error, p.stderr.String())
	} else if result != nil {
		if err := json.Unmarshal(m.Result, result); err != nil {
			t.Fatalf("node %v: %v", req["cmd"], err)
		}
	}
}

// try sends a command and returns the reply, whether it succeeded or not.
func (p *nodePeer) try(t *testing.T, req map[string]any) nodeMsg {
	t.Helper()
	ch := make(chan nodeMsg, 1)
	p.mu.Lock()
	p.next++
	req["id"] = p.next
	p.waits[p.next] = ch
	p.mu.Unlock()
	line, _ := json.Marshal(req)
	if _, err := p.stdin.Write(append(line, '\n')); err != nil {
		t.Fatalf("node %v: %v\nstderr: %s", req["cmd"], err, p.stderr.String())
	}
	select {
	case m := <-ch:
		return m
	case <-p.readDone:
		t.Fatalf("the node peer exited during %v\nstderr: %s", req["cmd"], p.stderr.String())
	case <-time.After(waitTimeout):
		t.Fatalf("node %v: no reply within %v\nstderr: %s", req["cmd"], waitTimeout, p.stderr.String())
	}
	return nodeMsg{}
}

// startWatcher starts Node watcher w with fast settings and returns the
// events delivered before its start resolved, and its self.
func (p *nodePeer) startWatcher(t *testing.T, w string, self map[string]any) ([]string, nodeInst) {
	t.Helper()
	var res struct {
		Delivered []string `json:"delivered"`
		Self      nodeInst `json:"self"`
	}
	p.call(t, map[string]any{"cmd": "start", "w": w, "self": self,
		"options": map[string]any{"ttl": 1000, "keepAlive": 200}}, &res)
	return res.Delivered, res.Self
}

func (p *nodePeer) services(t *testing.T, w, table string) []nodeInst {
	t.Helper()
	var out []nodeInst
	p.call(t, map[string]any{"cmd": "services", "w": w, "table": table}, &out)
	return out
}

func (p *nodePeer) lookup(t *testing.T, w, table, id string) (nodeInst, bool) {
	t.Helper()
	for _, in := range p.services(t, w, table) {
		if in.ID == id {
			return in, true
		}
	}
	return nodeInst{}, false
}

// has reports whether watcher w was told op about id.
func (p *nodePeer) has(w, op, id string) bool { return p.count(w, op, id) > 0 }

func (p *nodePeer) count(w, op, id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, e := range p.events {
		if e.W == w && e.Event == op && (id == "" || e.Inst.ID == id) {
			n++
		}
	}
	return n
}

// kill is SIGKILL: the Node process deregisters nothing.
func (p *nodePeer) kill() {
	p.killed = true
	_ = p.cmd.Process.Kill()
	<-p.readDone
	_ = p.cmd.Wait()
}

// close ends the peer: on stdin's end it stops its watchers and exits.
func (p *nodePeer) close(t *testing.T) {
	if p.killed {
		return
	}
	_ = p.stdin.Close()
	select {
	case <-p.readDone:
	case <-time.After(waitTimeout):
		t.Errorf("the node peer did not exit after its stdin closed\nstderr: %s", p.stderr.String())
		_ = p.cmd.Process.Kill()
		<-p.readDone
	}
	if err := p.cmd.Wait(); err != nil {
		t.Errorf("node peer: %v\nstderr: %s", err, p.stderr.String())
	}
}

// startGo starts a Go watcher on b with the fault tests' fast settings
// (TTL 1s, keepalive 200ms), as the Node watchers have them.
func startGo(t *testing.T, b *backend, self Instance) *node {
	t.Helper()
	n, err := b.startNode(t, self)
	if err != nil {
		t.Fatalf("start %s: %v", self.Key(), err)
	}
	return n
}

func nodeIDs(insts []nodeInst) string {
	var s []string
	for _, i := range insts {
		s = append(s, i.ID)
	}
	return strings.Join(s, ",")
}

// routing describes a view as Pick sees it: id, state and weight of each.
func routing(insts []Instance) string {
	var s []string
	for _, i := range insts {
		s = append(s, fmt.Sprintf("%s:%s:%d", i.ID, i.State, i.Weight()))
	}
	return strings.Join(s, " ")
}

func nodeRouting(insts []nodeInst) string {
	var s []string
	for _, i := range insts {
		s = append(s, fmt.Sprintf("%s:%s:%d", i.ID, i.State, Instance{Meta: i.Meta}.Weight()))
	}
	return strings.Join(s, " ")
}

func TestInteropGoAndNode(t *testing.T) {
	checkLeaks(t)
	dir := requireNodeClient(t)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	rc := srv.Client(t)
	ctx := context.Background()
	const table = "game/interop/v1/game"
	registered := func(id string) bool {
		return rc.HExists(ctx, protocol.TableKeys(DefaultKeyPrefix, table).Inst, id).Val()
	}
	// IDs that UTF-16 (JavaScript's <) and UTF-8 (the spec's byte order) sort
	// differently: U+FF61 before U+1D11E in UTF-8, after it in UTF-16.
	g1 := startGo(t, b, Instance{Table: table, ID: "go-1", Name: "127.0.0.1:7001", Desc: `{"lang":"go"}`,
		Meta: map[string]string{"weight": "2", "zone": "eu"}})
	g2 := startGo(t, b, Instance{Table: table, ID: "gs-\uff61", Name: "127.0.0.1:7002"})
	p := startNodePeer(t, dir, srv.Addr())

	// Adds, Go -> Node: the peers present are delivered before start resolves.
	got, n1 := p.startWatcher(t, "n1", map[string]any{"table": table, "id": "node-1", "name": "127.0.0.1:8001",
		"desc": `{"lang":"node"}`, "meta": map[string]string{"weight": "3"}})
	if want := []string{"add go-1", "add gs-\uff61"}; !slices.Equal(got, want) {
		t.Errorf("node-1 was told %q before its start resolved, want %q", got, want)
	}
	p.startWatcher(t, "n2", map[string]any{"table": table, "id": "gs-\U0001D11E", "name": "127.0.0.1:8002"})
	p.startWatcher(t, "n3", map[string]any{"table": table, "id": "玩家-3", "name": "127.0.0.1:8003", "state": "draining"})
	for _, w := range []string{"n1", "n2", "n3"} {
		eventually(t, w+" hears of the 4 others", func() bool { return p.count(w, "add", "") == 4 })
	}
	if in, _ := p.lookup(t, "n1", table, "go-1"); in.diff(g1.w.Self()) != "" {
		t.Errorf("go-1 at node: %s", in.diff(g1.w.Self()))
	}

	// Adds, Node -> Go, with every field as the Node side has it.
	const all = "go-1,gs-\uff61,gs-\U0001D11E,node-1,玩家-3"
	converge(t, []*node{g1, g2}, table, all)
	if got := nodeIDs(p.services(t, "n1", table)); got != all {
		t.Errorf("node's services in %s, want the byte order %s", got, all)
	}
	for _, id := range []string{"gs-\U0001D11E", "node-1", "玩家-3"} {
		eventually(t, "go's OnAdd of "+id, func() bool { return g1.rec.has("add", id) && g2.rec.has("add", id) })
	}
	if in, _ := g1.w.Lookup(table, "node-1"); n1.diff(in) != "" {
		t.Errorf("node-1 at go: %s", n1.diff(in))
	}
	if in, _ := g1.w.Lookup(table, "玩家-3"); in.State != Draining {
		t.Errorf("玩家-3 at go: state %v, want draining", in.State)
	}

	// Updates, Node -> Go.
	p.call(t, map[string]any{"cmd": "set", "w": "n1", "desc": `{"lang":"node","v":2}`,
		"meta": map[string]string{"weight": "4", "zone": "us"}, "state": "unhealthy"}, &n1)
	eventually(t, "node-1's update at go", func() bool {
		in, _ := g1.w.Lookup(table, "node-1")
		return n1.diff(in) == "" && in.State == Unhealthy && in.Meta["zone"] == "us" && g1.rec.has("update", "node-1")
	})
	p.call(t, map[string]any{"cmd": "set", "w": "n1", "state": "serving"}, &n1)

	// Updates, Go -> Node.
	if err := g1.w.SetDesc(ctx, `{"lang":"go","v":2}`); err != nil {
		t.Fatal(err)
	}
	if err := g1.w.SetMeta(ctx, map[string]string{"weight": "5"}); err != nil {
		t.Fatal(err)
	}
	if err := g1.w.SetState(ctx, Draining); err != nil {
		t.Fatal(err)
	}
	eventually(t, "go-1's update at node", func() bool {
		in, _ := p.lookup(t, "n2", table, "go-1")
		return in.diff(g1.w.Self()) == "" && in.State == "draining" && p.has("n2", "update", "go-1")
	})

	// Both languages pick the same owners: all serving but go-1 and 玩家-3
	// (draining, so passed over), weights 5, 1, 1, 4, 1.
	eventually(t, "the same view on both sides", func() bool {
		return nodeRouting(p.services(t, "n2", table)) == routing(g2.w.Services(table)) &&
			routing(g2.w.Services(table)) == "go-1:draining:5 gs-\uff61:serving:1 gs-\U0001D11E:serving:1 node-1:serving:4 玩家-3:draining:1"
	})
	var picks struct {
		Owners []string   `json:"owners"`
		PickN  [][]string `json:"pickN"`
	}
	p.call(t, map[string]any{"cmd": "pick", "w": "n2", "table": table, "keys": 10000, "pickN": 3, "nKeys": 1000}, &picks)
	if len(picks.Owners) != 10000 || len(picks.PickN) != 1000 {
		t.Fatalf("node picked %d and %d keys", len(picks.Owners), len(picks.PickN))
	}
	differ, owners := 0, map[string]int{}
	for i, owner := range picks.Owners {
		key := fmt.Sprintf("key-%d", i)
		in, _ := g2.w.Pick(table, key)
		owners[in.ID]++
		if in.ID != owner {
			if differ++; differ <= 5 {
				t.Errorf("Pick(%q): go %q, node %q", key, in.ID, owner)
			}
		}
		if i < len(picks.PickN) {
			if want := ids(g2.w.PickN(table, key, 3)); strings.Join(picks.PickN[i], ",") != want {
				t.Errorf("PickN(%q, 3): go %s, node %s", key, want, strings.Join(picks.PickN[i], ","))
			}
		}
	}
	if differ > 0 || len(owners) != 3 {
		t.Errorf("%d of 10000 keys picked differently; go's owners: %v", differ, owners)
	}

	// Clean stops: deregistered at once, heard by the other side.
	p.call(t, map[string]any{"cmd": "stop", "w": "n3"}, nil)
	if registered("玩家-3") {
		t.Error("a stopped Node watcher is still registered")
	}
	eventually(t, "go hears node's stop", func() bool { return g1.rec.has("remove", "玩家-3") })
	stopNode(t, g2.w)
	if registered("gs-\uff61") {
		t.Error("a stopped Go watcher is still registered")
	}
	eventually(t, "node hears go's stop", func() bool { return p.has("n1", "remove", "gs-\uff61") })

	// A killed Node process expires at Go.
	p2 := startNodePeer(t, dir, srv.Addr())
	p2.startWatcher(t, "k", map[string]any{"table": table, "id": "node-killed", "name": "127.0.0.1:8009"})
	eventually(t, "go sees node-killed", func() bool { return g1.rec.has("add", "node-killed") })
	p2.kill()
	if !registered("node-killed") {
		t.Error("a killed Node process deregistered")
	}
	eventually(t, "node-killed expires at go", func() bool { return g1.rec.has("remove", "node-killed") })

	// A crashed Go watcher expires at Node.
	g3 := startGo(t, b, Instance{Table: table, ID: "go-crashed", Name: "127.0.0.1:7009"})
	eventually(t, "node sees go-crashed", func() bool { return p.has("n1", "add", "go-crashed") })
	crash(t, g3.w)
	if !registered("go-crashed") {
		t.Error("a crashed Go watcher deregistered")
	}
	eventually(t, "go-crashed expires at node", func() bool { return p.has("n1", "remove", "go-crashed") })

	// Nothing else was removed anywhere, and nobody heard of itself.
	for _, id := range []string{"go-1", "node-1", "gs-\U0001D11E"} {
		if g1.rec.has("remove", id) || p.has("n1", "remove", id) || p.has("n2", "remove", id) {
			t.Errorf("%s was removed somewhere: go %s", id, g1.rec)
		}
	}
	if g1.rec.has("add", "go-1") || p.has("n1", "add", "node-1") || p.has("n2", "add", "gs-\U0001D11E") {
		t.Error("a watcher was told about itself")
	}
}

// An empty Redis restart: every process registers again, every watcher reads
// its table again under the new epoch, and nobody is falsely removed, on
// either side.
func TestInteropEmptyRedisRestart(t *testing.T) {
	checkLeaks(t)
	dir := requireNodeClient(t)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	const table = "game/interop/v1/restart"
	const all = "go-1,go-2,node-1,node-2"
	g1 := startGo(t, b, Instance{Table: table, ID: "go-1", Name: "127.0.0.1:7001", Meta: map[string]string{"weight": "2"}})
	g2 := startGo(t, b, Instance{Table: table, ID: "go-2", Name: "127.0.0.1:7002", State: Draining})
	p := startNodePeer(t, dir, srv.Addr())
	p.startWatcher(t, "n1", map[string]any{"table": table, "id": "node-1", "name": "127.0.0.1:8001", "desc": "d1"})
	p.startWatcher(t, "n2", map[string]any{"table": table, "id": "node-2", "name": "127.0.0.1:8002"})
	converge(t, []*node{g1, g2}, table, all)
	nodeSees := func(w string) bool { return nodeIDs(p.services(t, w, table)) == all }
	eventually(t, "node sees all", func() bool { return nodeSees("n1") && nodeSees("n2") })
	before := routing(g1.w.Services(table))

	srv.Kill(t)
	srv.Start(t)

	rc := srv.Client(t)
	inst := protocol.TableKeys(DefaultKeyPrefix, table).Inst
	eventually(t, "everyone registered again", func() bool { return rc.HLen(context.Background(), inst).Val() == 4 })
	// Past the TTL for which removals were held back after the new epoch.
	time.Sleep(2500 * time.Millisecond)
	var stats struct {
		Reregistrations int `json:"reregistrations"`
	}
	for _, w := range []string{"n1", "n2"} {
		p.call(t, map[string]any{"cmd": "stats", "w": w}, &stats)
		if stats.Reregistrations < 1 {
			t.Errorf("node %s: %d re-registrations", w, stats.Reregistrations)
		}
	}
	if g1.w.Stats().Reregistrations < 1 {
		t.Errorf("go-1: no re-registration")
	}
	for _, n := range []*node{g1, g2} {
		if got := ids(n.w.Services(table)); got != all {
			t.Errorf("%s sees %s, want %s", n.w.Self().ID, got, all)
		}
	}
	noRemoves(t, []*node{g1, g2}, "go-1", "go-2", "node-1", "node-2")
	for _, w := range []string{"n1", "n2"} {
		if !nodeSees(w) || p.count(w, "remove", "") != 0 {
			t.Errorf("node %s: sees %s, %d removals", w, nodeIDs(p.services(t, w, table)), p.count(w, "remove", ""))
		}
	}
	if after := routing(g1.w.Services(table)); after != before {
		t.Errorf("after the restart go sees %s, before %s", after, before)
	}
	if in, _ := p.lookup(t, "n2", table, "node-1"); in.Desc != "d1" {
		t.Errorf("node-1's desc after the restart: %q", in.Desc)
	}
	if got := nodeRouting(p.services(t, "n1", table)); got != before {
		t.Errorf("after the restart node sees %s, go before %s", got, before)
	}
}
