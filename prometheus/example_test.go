package svcwatchprom_test

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
	svcwatchprom "github.com/svcwatch/svcwatch/prometheus"
)

// A gate exports its watcher's health on /metrics. miniredis stands in for
// Redis here.
func ExampleCollector() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()
	ctx := context.Background()

	w, err := svcwatch.NewRedisServiceWatcher(client,
		svcwatch.Instance{Table: "mygame/prod/v1/gate", ID: "gate-1", Name: "10.0.0.2:7000"})
	if err != nil {
		panic(err)
	}
	if err := w.Start(ctx); err != nil {
		panic(err)
	}
	defer w.Stop(ctx)
	c := svcwatchprom.NewCollector(w) // reads w at each scrape, counts its events from now on

	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})) // your /metrics
	defer srv.Close()

	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		panic(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "svcwatch_registered ") || strings.HasPrefix(line, "svcwatch_instances{") {
			fmt.Println(line)
		}
	}
	// Output:
	// svcwatch_instances{state="draining",table="mygame/prod/v1/gate"} 0
	// svcwatch_instances{state="serving",table="mygame/prod/v1/gate"} 1
	// svcwatch_instances{state="unhealthy",table="mygame/prod/v1/gate"} 0
	// svcwatch_registered 1
}
