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
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/protocol"
)

func tablesCommand() *command {
	var o tablesOpts
	return &command{
		name:    "tables",
		summary: "list the catalog's tables under the prefix: live instances, revision, and for an empty table how long it has been empty and when it will be collected",
		setFlags: func(fs *flag.FlagSet) {
			fs.DurationVar(&o.retention, "retention", svcwatch.DefaultRetention,
				"the table retention your processes use (WithTableRetention), for the COLLECT-IN column")
			fs.BoolVar(&o.rescan, "rescan", false,
				"SCAN for tables missing from the catalog and add them (done once by itself on a catalog that was never seeded)")
		},
		run: func(ctx context.Context, g *globalOpts, fs *flag.FlagSet, out, errOut io.Writer) error {
			return runTables(ctx, g, o, fs, out, errOut)
		},
	}
}

type tablesOpts struct {
	retention time.Duration
	rescan    bool
}

// tableInfo is one line of `svcwatch tables`.
type tableInfo struct {
	Table     string `json:"table"`
	Instances int64  `json:"instances"` // deadline still ahead by server time
	Entries   int64  `json:"entries"`   // records stored, expired ones not yet reaped included
	Revision  int64  `json:"revision"`
	Epoch     string `json:"epoch"`
	// EmptySince is when the table's last record went (server clock, RFC
	// 3339), "" while it has records; CollectIn is the seconds left until
	// the retention has passed (0: due at the next collection pass).
	EmptySince string   `json:"empty_since,omitempty"`
	EmptyFor   *float64 `json:"empty_for_seconds,omitempty"`
	CollectIn  *float64 `json:"collect_in_seconds,omitempty"`
	Gone       bool     `json:"gone,omitempty"` // listed in the catalog but without keys: collected, not yet unlisted
}

// tableStatScript counts a table in one atomic call, against the clock of the
// node that holds it (so a Cluster's nodes never mix clocks).
const tableStatScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {redis.call('HLEN', KEYS[1]), redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf'),
  redis.call('GET', KEYS[3]) or '', redis.call('GET', KEYS[4]) or '',
  redis.call('HGET', KEYS[5], 'empty') or '', now, redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])}
`

func runTables(ctx context.Context, g *globalOpts, o tablesOpts, fs *flag.FlagSet, out, errOut io.Writer) error {
	if fs.NArg() > 0 {
		return usagef("takes no arguments")
	}
	if o.retention < svcwatch.MinRetention {
		return usagef("-retention %v is under the minimum of %v", o.retention, svcwatch.MinRetention)
	}
	c, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := seedCatalog(ctx, c, g.prefix, o.rescan, errOut); err != nil {
		return err
	}
	names, err := c.ZRange(ctx, protocol.Catalog(g.prefix).Tables, 0, -1).Result()
	if err != nil {
		return fmt.Errorf("read the catalog: %w", err)
	}
	infos, err := statTables(ctx, c, g.prefix, names, o.retention)
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
	fmt.Fprintln(tw, "TABLE\tINSTANCES\tSTALE\tREVISION\tEMPTY-FOR\tCOLLECT-IN")
	for _, t := range infos {
		emptyFor, collectIn := "-", "-"
		switch {
		case t.Gone:
			emptyFor, collectIn = "-", "collected"
		case t.EmptyFor != nil:
			emptyFor = fmtSeconds(*t.EmptyFor)
			collectIn = fmtSeconds(*t.CollectIn)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\n", t.Table, t.Instances, t.Entries-t.Instances, t.Revision, emptyFor, collectIn)
	}
	return tw.Flush()
}

func fmtSeconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Second).String()
}

// seedCatalog adds the tables written before the catalog existed (found with
// one SCAN, on every master of a Cluster) to the catalog, once: the catalog's
// seeded key records that it was done. rescan does it again.
func seedCatalog(ctx context.Context, c redis.UniversalClient, prefix string, rescan bool, errOut io.Writer) error {
	cat := protocol.Catalog(prefix)
	if !rescan {
		n, err := c.Exists(ctx, cat.Seeded).Result()
		if err != nil {
			return fmt.Errorf("read the catalog: %w", err)
		}
		if n == 1 {
			return nil
		}
	}
	found, err := findTables(ctx, c, prefix)
	if err != nil {
		return err
	}
	// All in one pipeline: the catalog's keys share one slot, and EVAL (not
	// EVALSHA) cannot meet NOSCRIPT.
	added := 0
	pipe := c.Pipeline()
	cmds := make([]*redis.Cmd, len(found))
	for i, t := range found {
		cmds[i] = pipe.Eval(ctx, protocol.CatalogTouch, cat.Script(), cat.Channel, t, "")
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
	for i, cmd := range cmds {
		res, err := cmd.Slice()
		if err != nil {
			return fmt.Errorf("add %s to the catalog: %w", found[i], err)
		}
		if n, _ := res[0].(int64); n == 1 {
			added++
		}
	}
	if err := c.Set(ctx, cat.Seeded, time.Now().UTC().Format(time.RFC3339), 0).Err(); err != nil {
		return fmt.Errorf("mark the catalog seeded: %w", err)
	}
	if added > 0 {
		fmt.Fprintf(errOut, "svcwatch: added %d table(s) found by SCAN to the catalog (done once; -rescan does it again)\n", added)
	}
	return nil
}

// findTables lists the tables that have any key, with SCAN (never KEYS):
// only to seed the catalog with the tables written before it existed;
// on a Cluster, on every master, since SCAN walks one node.
func findTables(ctx context.Context, c redis.UniversalClient, prefix string) ([]string, error) {
	pattern := protocol.TablePattern(prefix)
	var mu sync.Mutex
	found := map[string]bool{}
	scan := func(ctx context.Context, node redis.Cmdable) error {
		it := node.Scan(ctx, 0, pattern, 1000).Iterator()
		for it.Next(ctx) {
			if t, ok := protocol.TableOfKey(prefix, it.Val()); ok {
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
func statTables(ctx context.Context, c redis.UniversalClient, prefix string, names []string, retention time.Duration) ([]tableInfo, error) {
	const batch = 500
	infos := make([]tableInfo, 0, len(names))
	// EVAL, not EVALSHA: a pipeline cannot recover from NOSCRIPT, and the
	// script is a few hundred bytes.
	for start := 0; start < len(names); start += batch {
		end := min(start+batch, len(names))
		pipe := c.Pipeline()
		cmds := make([]*redis.Cmd, 0, end-start)
		for _, t := range names[start:end] {
			cmds = append(cmds, pipe.Eval(ctx, tableStatScript, protocol.TableKeys(prefix, t).Script()))
		}
		_, _ = pipe.Exec(ctx) // each command carries its own error
		for i, cmd := range cmds {
			t := names[start+i]
			res, err := cmd.Slice()
			if err != nil {
				return nil, fmt.Errorf("read table %s: %w", t, err)
			}
			info := tableInfo{Table: t}
			if len(res) == 7 {
				info.Entries, _ = res[0].(int64)
				info.Instances, _ = res[1].(int64)
				rev, _ := res[2].(string)
				info.Revision, _ = strconv.ParseInt(rev, 10, 64)
				info.Epoch, _ = res[3].(string)
				emptyRaw, _ := res[4].(string)
				now, _ := res[5].(int64)
				keys, _ := res[6].(int64)
				info.Gone = keys == 0
				if since, err := strconv.ParseInt(emptyRaw, 10, 64); err == nil && info.Entries == 0 {
					info.EmptySince = time.UnixMilli(since).UTC().Format(time.RFC3339)
					emptyFor := float64(now-since) / 1000
					collectIn := max(0, retention.Seconds()-emptyFor)
					info.EmptyFor, info.CollectIn = &emptyFor, &collectIn
				}
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
