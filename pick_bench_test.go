package svcwatch

import (
	"strconv"
	"testing"
)

var routeBenchSizes = []int{10, 100, 1000, 10000}

// BenchmarkPick: one lookup, over 65,536 distinct keys (so the table is read
// at random places, as by a gate routing many players).
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
