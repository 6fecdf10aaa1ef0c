package protocol

import (
	_ "embed" // the .lua files
)

//go:embed scripts/prelude.lua
var prelude string

var (
	//go:embed scripts/register.lua
	register string
	//go:embed scripts/heartbeat.lua
	heartbeat string
	//go:embed scripts/update.lua
	update string
	//go:embed scripts/deregister.lua
	deregister string
	//go:embed scripts/check.lua
	check string
	//go:embed scripts/load.lua
	load string
	//go:embed scripts/gc.lua
	gc string
)

// The catalog's scripts, which run on the catalog's keys (CatalogKeys.Script)
// without the prelude; their ARGV is documented at the top of each file.
var (
	//go:embed scripts/catalog_touch.lua
	CatalogTouch string
	//go:embed scripts/catalog_drop.lua
	CatalogDrop string
	//go:embed scripts/catalog_due.lua
	CatalogDue string
)

// The scripts' sources, each the shared prelude (clock, epoch, publish, the
// mass-expiry guard, reaping) followed by its own body. Every script takes the
// KEYS of Keys.Script and the ARGV of ScriptArgs, then its own arguments, as
// documented at the top of each file in scripts/.
var (
	Register   = prelude + register
	Heartbeat  = prelude + heartbeat
	Update     = prelude + update
	Deregister = prelude + deregister
	Check      = prelude + check
	Load       = prelude + load
	GC         = prelude + gc
)

// ScriptArgs returns the ARGV every script starts with: the table's channel, the
// silence after which the mass-expiry guard acts (half the caller's TTL, ms), the
// most expired entries one call reaps, and a fresh random token (the epoch if
// the table has none yet; the change token's stem), followed by extra.
func ScriptArgs(k Keys, silenceMS int64, reapLimit int, token string, extra ...any) []any {
	return append([]any{k.Channel, silenceMS, reapLimit, token}, extra...)
}
