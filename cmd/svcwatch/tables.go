package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"sync"
	"text/tabwriter"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/protocol"
)

func tablesCommand() *command {
	return &command{
		name:    "tables",
		summary: "list every table under the prefix with its live instance count and revision",
		run:     runTables,
	}
}

// tableInfo is one line of `svcwatch tables`.
type tableInfo struct {
	Table     string `json:"table"`
	Instances int64  `json:"instances"` // deadline still ahead by server time
	Entries   int64  `json:"entries"`   // records stored, expired ones not yet reaped included
	Revision  int64  `json:"revision"`
	Epoch     string `json:"epoch"`
}

// tableStatScript counts a table in one atomic call, against the clock of the
// node that holds it (so a Cluster's nodes never mix clocks).
const tableStatScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {redis.call('HLEN', KEYS[1]), redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf'),
  redis.call('GET', KEYS[3]) or '', redis.call('GET', KEYS[4]) or ''}
`

func runTables(ctx context.Context, g *globalOpts, fs *flag.FlagSet, out, errOut io.Writer) error {
	if fs.NArg() > 0 {
		return usagef("takes no arguments")
	}
	c, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	names, err := findTables(ctx, c, g.prefix)
	if err != nil {
		return err
	}
	infos, err := statTables(ctx, c, g.prefix, names)
	if err != nil {
		return err
	}
	if g.json {
		return writeJSON(out, infos)
	}
	if len(infos) == 0 {
		fmt.Fprintf(errOut, "svcwatch: no tables under prefix %q\n", g.prefix)
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	// STALE: records without a live deadline (expired and not yet reaped, or
	// damaged); the watchers do not report them.
	fmt.Fprintln(tw, "TABLE\tINSTANCES\tSTALE\tREVISION")
	for _, t := range infos {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", t.Table, t.Instances, t.Entries-t.Instances, t.Revision)
	}
	return tw.Flush()
}

// findTables lists the tables that have an inst hash, with SCAN (never KEYS):
// on a Cluster, on every master, since SCAN walks one node.
func findTables(ctx context.Context, c redis.UniversalClient, prefix string) ([]string, error) {
	pattern := protocol.InstPattern(prefix)
	var mu sync.Mutex
	found := map[string]bool{}
	scan := func(ctx context.Context, node redis.Cmdable) error {
		it := node.Scan(ctx, 0, pattern, 1000).Iterator()
		for it.Next(ctx) {
			if t, ok := protocol.TableOf(prefix, protocol.SuffixInst, it.Val()); ok {
				mu.Lock()
				found[t] = true
				mu.Unlock()
			}
		}
		return it.Err()
	}
	var err error
	if cc, ok := c.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return scan(ctx, m) })
	} else {
		err = scan(ctx, c)
	}
	if err != nil {
		return nil, fmt.Errorf("scan for tables: %w", err)
	}
	names := make([]string, 0, len(found))
	for t := range found {
		names = append(names, t)
	}
	sort.Strings(names)
	return names, nil
}

// statTables counts the tables, pipelined in batches: one round trip per
// batch (per node on a Cluster) however many tables there are.
func statTables(ctx context.Context, c redis.UniversalClient, prefix string, names []string) ([]tableInfo, error) {
	const batch = 500
	infos := make([]tableInfo, 0, len(names))
	// EVAL, not EVALSHA: a pipeline cannot recover from NOSCRIPT, and the
	// script is a few hundred bytes.
	for start := 0; start < len(names); start += batch {
		end := min(start+batch, len(names))
		pipe := c.Pipeline()
		cmds := make([]*redis.Cmd, 0, end-start)
		for _, t := range names[start:end] {
			cmds = append(cmds, pipe.Eval(ctx, tableStatScript, protocol.TableKeys(prefix, t).Script()[:4]))
		}
		_, _ = pipe.Exec(ctx) // each command carries its own error
		for i, cmd := range cmds {
			t := names[start+i]
			res, err := cmd.Slice()
			if err != nil {
				return nil, fmt.Errorf("read table %s: %w", t, err)
			}
			info := tableInfo{Table: t}
			if len(res) == 4 {
				info.Entries, _ = res[0].(int64)
				info.Instances, _ = res[1].(int64)
				rev, _ := res[2].(string)
				info.Revision, _ = strconv.ParseInt(rev, 10, 64)
				info.Epoch, _ = res[3].(string)
			}
			infos = append(infos, info)
		}
	}
	return infos, nil
}

// writeJSON prints v indented, for people and for jq alike.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
