package svcwatchkratos

// instance.go: the mapping between a kratos ServiceInstance and a svcwatch
// Instance.

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"strings"

	"github.com/go-kratos/kratos/v2/registry"

	"github.com/svcwatch/svcwatch"
)

// desc is the Desc of an instance registered through a Registry: what a
// ServiceInstance has beyond its ID and Metadata.
type desc struct {
	Name      string   `json:"name"`
	Version   string   `json:"version"`
	Endpoints []string `json:"endpoints"`
}

// servicePrefix returns the table prefix of every version of service name.
func (r *Registry) servicePrefix(name string) (string, error) {
	if err := checkSegment("service name", name); err != nil {
		return "", err
	}
	return svcwatch.Path(r.prefix, name), nil
}

// checkSegment refuses what cannot be one path segment of a table; svcwatch
// checks the rest (characters, lengths) when the watcher is built.
func checkSegment(what, s string) error {
	if s == "" || strings.Contains(s, "/") {
		return fmt.Errorf("%w: %s %q must be non-empty and hold no '/'", svcwatch.ErrInvalid, what, s)
	}
	return nil
}

// toInstance maps a ServiceInstance to the svcwatch Instance that registers it.
func (r *Registry) toInstance(si *registry.ServiceInstance) (svcwatch.Instance, error) {
	if si == nil {
		return svcwatch.Instance{}, fmt.Errorf("%w: nil service instance", svcwatch.ErrInvalid)
	}
	table, err := r.servicePrefix(si.Name)
	if err != nil {
		return svcwatch.Instance{}, err
	}
	if si.Version != "" {
		if err := checkSegment("version", si.Version); err != nil {
			return svcwatch.Instance{}, err
		}
		table = svcwatch.Path(table, si.Version)
	}
	addr, err := dialAddress(si.Endpoints)
	if err != nil {
		return svcwatch.Instance{}, err
	}
	d, err := json.Marshal(desc{Name: si.Name, Version: si.Version, Endpoints: si.Endpoints})
	if err != nil {
		return svcwatch.Instance{}, fmt.Errorf("svcwatch/kratos: encode %s: %w", si, err)
	}
	return svcwatch.Instance{
		Table: table, ID: si.ID, Name: addr, Desc: string(d), Meta: maps.Clone(si.Metadata),
	}, nil
}

// dialAddress returns the host:port of the first grpc endpoint, else of the
// first endpoint.
func dialAddress(endpoints []string) (string, error) {
	first := ""
	for _, e := range endpoints {
		u, err := url.Parse(e)
		if err != nil || u.Host == "" {
			return "", fmt.Errorf("%w: endpoint %q is not scheme://host:port", svcwatch.ErrInvalid, e)
		}
		if u.Scheme == "grpc" || u.Scheme == "grpcs" {
			return u.Host, nil
		}
		if first == "" {
			first = u.Host
		}
	}
	if first == "" {
		return "", fmt.Errorf("%w: a service instance needs an endpoint", svcwatch.ErrInvalid)
	}
	return first, nil
}

// fromInstance maps a discovered instance of service name back to a
// ServiceInstance. An instance registered by something else than a Registry
// (another language, the sidecar) has no such Desc: its version comes from
// its table and its endpoint is grpc://Name.
func (r *Registry) fromInstance(name string, inst svcwatch.Instance) *registry.ServiceInstance {
	si := &registry.ServiceInstance{ID: inst.ID, Name: name, Metadata: maps.Clone(inst.Meta)}
	var d desc
	if err := json.Unmarshal([]byte(inst.Desc), &d); err == nil && len(d.Endpoints) > 0 {
		si.Version, si.Endpoints = d.Version, d.Endpoints
		return si
	}
	p, _ := r.servicePrefix(name)
	si.Version = strings.TrimPrefix(strings.TrimPrefix(inst.Table, p), "/")
	si.Endpoints = []string{"grpc://" + inst.Name}
	return si
}
