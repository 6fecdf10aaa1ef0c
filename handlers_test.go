package svcwatch

import (
	"context"
	"testing"
)

func TestAddHandler(t *testing.T) {
	checkLeaks(t)
	b := miniBackend(t)
	b.newNode(t, gameTable, "b")
	b.newNode(t, gameTable, "c")
	a := b.newNode(t, gameTable, "a")
	late := &recorder{self: "a"}
	remove := a.w.AddHandler(late)
	flushed(t, a)
	if got := late.String(); got != "add b@"+inc(a, "b")+", add c@"+inc(a, "c") {
		t.Errorf("a late handler first hears of the known peers, sorted: %s", got)
	}
	d := b.newNode(t, gameTable, "d")
	eventually(t, "the late handler to see d", func() bool { return late.has("add", "d") })
	if a.rec.count("add", "d") != 1 {
		t.Errorf("the first handler: %s", a.rec)
	}
	remove()
	remove() // idempotent
	stopNode(t, d.w)
	eventually(t, "the first handler to see d go", func() bool { return a.rec.has("remove", "d") })
	flushed(t, a)
	if late.has("remove", "d") {
		t.Errorf("a removed handler was called: %s", late)
	}
	if a.w.AddHandler(nil) == nil {
		t.Error("AddHandler(nil) returned a nil remove")
	}
	if err := a.w.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.w.AddHandler(late)() // after Stop: nothing happens, nothing hangs
}

// inc is the incarnation of id in n's view.
func inc(n *node, id string) string {
	inst, _ := n.w.Lookup(gameTable, id)
	return inst.Incarnation
}
