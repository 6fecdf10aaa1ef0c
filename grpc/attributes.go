package svcwatchgrpc

// attributes.go: the svcwatch Instance carried by each resolved endpoint.

import (
	"maps"

	"google.golang.org/grpc/resolver"

	"github.com/svcwatch/svcwatch"
)

// instanceKey is the attribute key of the Instance on an endpoint.
type instanceKey struct{}

// instanceAttr holds an Instance as an attribute value. grpc compares
// attribute values with Equal when they have one, and Instance (its Meta map)
// cannot be compared with ==.
type instanceAttr struct{ inst svcwatch.Instance }

// Equal reports whether o holds the same Instance, Meta compared by content.
func (a instanceAttr) Equal(o any) bool {
	b, ok := o.(instanceAttr)
	if !ok {
		return false
	}
	x, y := a.inst, b.inst
	return x.Table == y.Table && x.ID == y.ID && x.Name == y.Name && x.Desc == y.Desc &&
		x.State == y.State && x.Incarnation == y.Incarnation && x.RegisteredAt.Equal(y.RegisteredAt) &&
		maps.Equal(x.Meta, y.Meta)
}

// String shows the instance's key in grpc's logs.
func (a instanceAttr) String() string { return a.inst.Key() }

func setInstance(e resolver.Endpoint, inst svcwatch.Instance) resolver.Endpoint {
	e.Attributes = e.Attributes.WithValue(instanceKey{}, instanceAttr{inst: inst})
	return e
}

// InstanceFromEndpoint returns the svcwatch Instance that an endpoint
// resolved by a Builder stands for (ID, Name, Desc, Meta, State, Incarnation
// ...), e.g. for a custom balancer or picker. The Meta is the caller's own.
// It reports false for an endpoint that carries none.
func InstanceFromEndpoint(e resolver.Endpoint) (svcwatch.Instance, bool) {
	a, ok := e.Attributes.Value(instanceKey{}).(instanceAttr)
	if !ok {
		return svcwatch.Instance{}, false
	}
	inst := a.inst
	inst.Meta = maps.Clone(inst.Meta)
	return inst, true
}
