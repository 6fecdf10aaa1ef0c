// Package scripts holds svcwatch's Lua scripts. Each script is the shared prelude
// (clock, epoch, publish, mass-expiry guard, reaping) followed by its own body.
package scripts

import (
	_ "embed" // the .lua files
)

//go:embed prelude.lua
var prelude string

var (
	//go:embed register.lua
	register string
	//go:embed heartbeat.lua
	heartbeat string
	//go:embed update.lua
	update string
	//go:embed deregister.lua
	deregister string
	//go:embed check.lua
	check string
	//go:embed load.lua
	load string
)

// Script sources, prelude included. KEYS and ARGV are documented in each file.
var (
	Register   = prelude + register
	Heartbeat  = prelude + heartbeat
	Update     = prelude + update
	Deregister = prelude + deregister
	Check      = prelude + check
	Load       = prelude + load
)
