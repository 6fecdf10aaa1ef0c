package protocol

// catalog.go: the catalog of tables: which tables exist under a key prefix,
// so that prefix watchers and tools find them without SCAN, and so that
// emptied tables can be collected.

import (
	"fmt"
)

// CatalogKeys names the catalog's keys and channel under one prefix. They
// share the hash tag {prefix}, so they live in one Cluster slot, apart from
// every table's; a catalog key never has the shape of a table key ("prefix:{").
type CatalogKeys struct {
	Tables  string // ZSET table -> server ms of its latest sign of life
	Rev     string // STRING: +1 whenever a table is added or removed
	Channel string // announcements: CatalogMessage JSON
	// Seeded is set once the tables written before the catalog existed were
	// added to it (by `svcwatch tables`, with one SCAN).
	Seeded string
}

// Catalog returns the catalog's keys under prefix: "prefix:catalog:{prefix}:suffix".
func Catalog(prefix string) CatalogKeys {
	base := prefix + ":catalog:{" + prefix + "}:"
	return CatalogKeys{Tables: base + "tables", Rev: base + "rev", Channel: base + "ch", Seeded: base + "seeded"}
}

// Script returns the KEYS the catalog scripts take: tables, rev.
func (k CatalogKeys) Script() []string { return []string{k.Tables, k.Rev} }

// Catalog announcement ops.
const (
	CatalogAdd = "add" // a table appeared
	CatalogDel = "del" // a table was collected
)

// CatalogMessage is one announcement on the catalog's channel.
type CatalogMessage struct {
	Op    string `json:"op"`
	Table string `json:"table"`
	Rev   int64  `json:"r"` // the catalog's revision after this change
}

// DecodeCatalogMessage parses an announcement; unknown fields are ignored.
func DecodeCatalogMessage(payload string) (CatalogMessage, error) {
	var m CatalogMessage
	if err := jsonCodec.UnmarshalFromString(payload, &m); err != nil {
		return m, fmt.Errorf("%w: catalog message: %v", ErrBadData, err)
	}
	if (m.Op != CatalogAdd && m.Op != CatalogDel) || m.Table == "" || m.Rev <= 0 {
		return m, fmt.Errorf("%w: catalog message %q", ErrBadData, payload)
	}
	return m, nil
}
