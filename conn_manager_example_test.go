package svcwatch_test

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/svcwatch/svcwatch"
)

// In a full mesh every pair of peers needs one connection, so only the peer
// with the lower ID dials; the other one accepts.
func ExampleWithConnFilter() {
	// A peer listening on loopback stands in for a discovered process.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()

	self := svcwatch.Instance{Table: "mygame/prod/gate", ID: "gate-1"}
	var d net.Dialer
	m := svcwatch.NewConnManager(
		func(ctx context.Context, p svcwatch.Instance) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", p.Name)
		},
		svcwatch.WithConnFilter(func(p svcwatch.Instance) bool { return self.ID < p.ID }),
	)
	defer m.Close()

	// m is the watcher's Handler; here the events are raised by hand.
	lower := svcwatch.Instance{Table: self.Table, ID: "gate-0", Name: "127.0.0.1:1"} // dials us
	higher := svcwatch.Instance{Table: self.Table, ID: "gate-2", Name: ln.Addr().String()}
	m.OnAdd(lower)
	m.OnAdd(higher)

	_, connected := m.Get(higher.Key())
	for deadline := time.Now().Add(10 * time.Second); !connected && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
		_, connected = m.Get(higher.Key())
	}
	_, dialed := m.Get(lower.Key())
	fmt.Println("gate-2 connected:", connected)
	fmt.Println("gate-0 connected:", dialed)
	// Output:
	// gate-2 connected: true
	// gate-0 connected: false
}
