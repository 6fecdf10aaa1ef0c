package svcwatch

import (
	"strconv"
	"testing"
)

var routeBenchSizes = []int{10, 100, 1000, 10000}

// BenchmarkPick: one lookup, over 65,536 distinct keys (so the table is read
// at random places, as by a gate routing many players), every instance
// serving, with the States stored in the table.
func BenchmarkPick(b *testing.B) {
	keys := playerKeys(1 << 16)
	for _, n := range routeBenchSizes {
		rt := newRouteTable(equalInsts(n))
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, ok := rt.pick(keys[i&(1<<16-1)]); !ok {
					b.Fatal("no pick")
				}
			}
		})
	}
}

// benchView is a view of the States by ID, as route.go asks: a map read at
// each question.
func benchView(insts []Instance) func(id string) bool {
	view := make(map[string]*Instance, len(insts))
	for i := range insts {
		view[insts[i].ID] = &insts[i]
	}
	return func(id string) bool { in := view[id]; return in != nil && in.State == Serving }
}

// BenchmarkPickFunc: pick asking a map for the States (as route.go does),
// every instance serving, and then 1 in 10 draining (their keys walk on to
// the next slots) and none serving (a walk until every owner said no).
func BenchmarkPickFunc(b *testing.B) {
	keys := playerKeys(1 << 16)
	for _, drain := range []string{"", "drain10-", "none-"} {
		for _, n := range routeBenchSizes {
			insts := equalInsts(n)
			rt := newRouteTable(insts)
			for i := range insts {
				if drain == "none-" || drain == "drain10-" && i%10 == 3 {
					insts[i].State = Draining
				}
			}
			serving := benchView(insts)
			b.Run(drain+strconv.Itoa(n), func(b *testing.B) {
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					if _, ok := rt.pickFunc(keys[i&(1<<16-1)], serving); ok == (drain == "none-") {
						b.Fatal("wrong pick")
					}
				}
			})
		}
	}
}

// BenchmarkPickN: the owner and 2 fallbacks.
func BenchmarkPickN(b *testing.B) {
	keys := playerKeys(1 << 16)
	for _, n := range routeBenchSizes {
		rt := newRouteTable(equalInsts(n))
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if got := rt.pickN(keys[i&(1<<16-1)], 3); len(got) != min(3, n) {
					b.Fatal("short pickN")
				}
			}
		})
	}
}

// BenchmarkRouteTableBuild: a table of n instances of weight 1 (M = 655373
// up to 6553 instances, 6553577 above).
func BenchmarkRouteTableBuild(b *testing.B) {
	for _, n := range routeBenchSizes {
		insts := equalInsts(n)
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				newRouteTable(insts)
			}
		})
	}
}
