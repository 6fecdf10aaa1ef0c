package svcwatchkratos_test

import (
	"context"
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"github.com/go-kratos/kratos/v2/registry"
	"github.com/redis/go-redis/v9"

	svcwatchkratos "github.com/svcwatch/svcwatch/kratos"
)

// A kratos app registers; another process discovers it. In an app, pass the
// Registry to kratos.Registrar and to the client's WithDiscovery instead.
// miniredis stands in for Redis here.
func ExampleRegistry() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()
	ctx := context.Background()

	r := svcwatchkratos.New(client, svcwatchkratos.WithPrefix("mygame/prod"))
	defer r.Close(ctx)
	err = r.Register(ctx, &registry.ServiceInstance{
		ID: "login-1", Name: "login", Version: "v1",
		Metadata:  map[string]string{"zone": "eu"},
		Endpoints: []string{"grpc://10.0.0.3:9000?isSecure=false"},
	}) // in table mygame/prod/login/v1
	if err != nil {
		panic(err)
	}

	w, err := r.Watch(ctx, "login") // every version of login
	if err != nil {
		panic(err)
	}
	defer w.Stop()
	list, err := w.Next() // the current list, at once
	if err != nil {
		panic(err)
	}
	for _, si := range list {
		fmt.Println(si.ID, si.Version, si.Endpoints, si.Metadata)
	}
	// Output:
	// login-1 v1 [grpc://10.0.0.3:9000?isSecure=false] map[zone:eu]
}
