package main

// catalog.go: what Redis holds, read with a raw go-redis client through the
// key layout of the protocol package: the catalog of tables, and whether a
// table still has keys. The story shows with it that an emptied table is
// collected: its keys and its catalog entry go.

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/protocol"
)

// inspector reads the catalog and table keys under the default key prefix.
type inspector struct {
	client *redis.Client
	cat    protocol.CatalogKeys
}

func newInspector(redisAddr string) *inspector {
	return &inspector{
		client: redis.NewClient(&redis.Options{Addr: redisAddr, ContextTimeoutEnabled: true}),
		cat:    protocol.Catalog(svcwatch.DefaultKeyPrefix),
	}
}

// catalog returns the tables the catalog lists, sorted.
func (in *inspector) catalog(ctx context.Context) ([]string, error) {
	tables, err := in.client.ZRange(ctx, in.cat.Tables, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("read the catalog: %w", err)
	}
	return tables, nil
}

// listed reports whether the catalog lists table.
func (in *inspector) listed(ctx context.Context, table string) (bool, error) {
	err := in.client.ZScore(ctx, in.cat.Tables, table).Err()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up %s in the catalog: %w", table, err)
	}
	return true, nil
}

// keys returns how many of table's keys exist.
func (in *inspector) keys(ctx context.Context, table string) (int64, error) {
	n, err := in.client.Exists(ctx, protocol.TableKeys(svcwatch.DefaultKeyPrefix, table).All()...).Result()
	if err != nil {
		return 0, fmt.Errorf("count the keys of %s: %w", table, err)
	}
	return n, nil
}

func (in *inspector) close() error { return in.client.Close() }
