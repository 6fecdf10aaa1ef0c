package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/protocol"
)

const descWidth = 40

func lsCommand() *command {
	var wide bool
	return &command{
		name:    "ls",
		args:    "[-wide] TABLE",
		summary: "list the instances of a table: id, name, state, age, time to expiry, incarnation, meta, desc",
		setFlags: func(fs *flag.FlagSet) {
			fs.BoolVar(&wide, "wide", false, "print the whole meta and desc instead of their first 40 characters")
		},
		run: func(ctx context.Context, g *globalOpts, fs *flag.FlagSet, out, _ io.Writer) error {
			return runLs(ctx, g, fs, out, wide)
		},
	}
}

// lsRow is one instance as `svcwatch ls` shows it. Durations are in
// milliseconds of Redis server time.
type lsRow struct {
	Table       string `json:"table"`
	ID          string `json:"id"`
	Name        string `json:"name,omitempty"`
	Incarnation string `json:"incarnation,omitempty"`
	Desc        string `json:"desc,omitempty"`
	// State is the record's state: "serving" when it has none, else as
	// stored ("draining", "unhealthy"; a state this version does not know is
	// shown as it is, and the library treats it as unhealthy). Absent when
	// the record is unreadable.
	State        string            `json:"state,omitempty"`
	Meta         map[string]string `json:"meta,omitempty"`
	RegisteredAt string            `json:"registered_at,omitempty"` // RFC 3339, server clock
	AgeMS        *int64            `json:"age_ms,omitempty"`
	TTLMS        int64             `json:"ttl_ms,omitempty"`
	// ExpiresInMS is the time left before the deadline; negative when the
	// deadline passed and no script has reaped the entry yet; absent without
	// a deadline.
	ExpiresInMS *int64 `json:"expires_in_ms,omitempty"`
	Error       string `json:"error,omitempty"` // the record cannot be read
	Raw         string `json:"raw,omitempty"`   // the stored record, when unreadable
}

// lsScript reads a table atomically, with the server's clock: {now ms, number
// of the table's keys that exist, HGETALL inst, ZRANGE exp WITHSCORES, rev}.
var lsScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3], KEYS[4]),
  redis.call('HGETALL', KEYS[1]), redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'),
  redis.call('GET', KEYS[3]) or ''}
`)

var errTableNotFound = errors.New("not found")

func runLs(ctx context.Context, g *globalOpts, fs *flag.FlagSet, out io.Writer, wide bool) error {
	if fs.NArg() != 1 {
		return usagef("takes exactly one TABLE, got %d arguments", fs.NArg())
	}
	table := fs.Arg(0)
	if err := checkTableArg(table); err != nil {
		return err
	}
	c, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	rows, err := readTable(ctx, c, g.prefix, table)
	if errors.Is(err, errTableNotFound) {
		return fmt.Errorf("table %s not found (prefix %q)", table, g.prefix)
	}
	if err != nil {
		return err
	}
	if g.json {
		return writeJSON(out, rows)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSTATE\tAGE\tEXPIRES\tINCARNATION\tMETA\tDESC")
	for _, r := range rows {
		age, expires := "-", "-"
		if r.AgeMS != nil {
			age = humanDuration(time.Duration(*r.AgeMS) * time.Millisecond)
		}
		if r.ExpiresInMS != nil {
			if d := time.Duration(*r.ExpiresInMS) * time.Millisecond; d >= 0 {
				expires = humanDuration(d)
			} else {
				expires = "overdue " + humanDuration(-d)
			}
		}
		name, state, inc, meta, desc := r.Name, r.State, r.Incarnation, formatMeta(r.Meta), r.Desc
		if r.Error != "" {
			name, state, inc, meta, desc = "?", "?", "?", "?", "unreadable record: "+r.Error+": "+r.Raw
		}
		if !wide {
			meta, desc = truncate(meta, descWidth), truncate(desc, descWidth)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			cell(r.ID), cell(name), cell(state), age, expires, cell(inc), cell(meta), cell(desc))
	}
	return tw.Flush()
}

// readTable returns the rows of a table sorted by ID, or errTableNotFound.
func readTable(ctx context.Context, c redis.UniversalClient, prefix, table string) ([]lsRow, error) {
	res, err := lsScript.Run(ctx, c, protocol.TableKeys(prefix, table).Script()[:4]).Slice()
	if err != nil {
		return nil, fmt.Errorf("read table %s: %w", table, err)
	}
	if len(res) != 5 {
		return nil, fmt.Errorf("read table %s: unexpected reply of %d items", table, len(res))
	}
	now, _ := res[0].(int64)
	if n, _ := res[1].(int64); n == 0 {
		return nil, errTableNotFound
	}
	records := map[string]string{}
	flat, _ := res[2].([]any)
	for i := 0; i+1 < len(flat); i += 2 {
		id, _ := flat[i].(string)
		records[id], _ = flat[i+1].(string)
	}
	deadlines := map[string]int64{}
	flat, _ = res[3].([]any)
	for i := 0; i+1 < len(flat); i += 2 {
		id, _ := flat[i].(string)
		score, _ := flat[i+1].(string)
		f, _ := strconv.ParseFloat(score, 64)
		deadlines[id] = int64(f)
	}

	rows := make([]lsRow, 0, len(records))
	for id, raw := range records {
		r := lsRow{Table: table, ID: id}
		if rec, err := protocol.DecodeRecord(raw); err != nil {
			// The reason alone: the row already says the record is unreadable.
			r.Error, r.Raw = strings.TrimPrefix(err.Error(), protocol.ErrBadData.Error()+": "), raw
		} else if rec.Name == "" {
			r.Error, r.Raw = "no incarnation or name", raw
		} else {
			r.Name, r.Incarnation, r.Desc, r.TTLMS = rec.Name, rec.Inc, rec.Desc, rec.TTL
			r.State, r.Meta = rec.State, rec.Meta
			if r.State == "" {
				r.State = protocol.StateServing
			}
			if len(r.Meta) == 0 {
				r.Meta = nil
			}
			if rec.Reg > 0 {
				age := now - rec.Reg
				r.AgeMS = &age
				r.RegisteredAt = time.UnixMilli(rec.Reg).UTC().Format(timeFormat)
			}
		}
		if d, ok := deadlines[id]; ok {
			left := d - now
			r.ExpiresInMS = &left
		}
		rows = append(rows, r)
	}
	// A deadline without a record is the moment between two writes of one
	// script, or damage; show it rather than hide it.
	for id, d := range deadlines {
		if _, ok := records[id]; !ok {
			left := d - now
			rows = append(rows, lsRow{Table: table, ID: id, ExpiresInMS: &left, Error: "deadline without a record"})
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].ID < rows[j].ID })
	return rows, nil
}

// timeFormat is RFC 3339 with milliseconds, always 3 digits.
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

// humanDuration prints a duration to the precision a person reads: 850ms,
// 8.4s, 12m3s, 5h12m, 3d4h.
func humanDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < 10*time.Second:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 24*time.Hour:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		d = d.Round(time.Hour)
		return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}

// cell makes a value safe for one tabwriter cell: control characters (tabs,
// newlines in a desc) would break the columns.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return ' '
		}
		return r
	}, s)
}

// formatMeta prints meta as k=v pairs sorted by key, comma-separated ("" when
// empty). A key or value that would make the list ambiguous (a comma, an
// equals sign, a quote, white space or a control character in it) is quoted
// as a Go string.
func formatMeta(meta map[string]string) string {
	if len(meta) == 0 {
		return ""
	}
	keys := make([]string, 0, len(meta))
	for k := range meta {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(quoteMetaPart(k))
		b.WriteByte('=')
		b.WriteString(quoteMetaPart(meta[k]))
	}
	return b.String()
}

func quoteMetaPart(s string) string {
	if strings.IndexFunc(s, func(r rune) bool {
		return r == ',' || r == '=' || r == '"' || unicode.IsSpace(r) || unicode.IsControl(r) || r == utf8.RuneError
	}) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

// truncate shortens s to n characters, marking the cut.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
