//go:build apiprof

// Package apiprof_test profiles the command write path in one process: it
// builds the same app `companyos dev` runs (embedded Kafka in a temp data
// dir, a fresh Postgres database and ClickHouse database) and drives it over
// loopback HTTP with package loadgen. The binary has no pprof endpoint; this
// is how to see where its CPU goes.
//
// Server goroutines carry the pprof label side=server and load generator
// goroutines side=client (goroutines inherit labels from their creator), so
// one CPU profile splits cleanly between the two; the rest is runtime work
// that belongs to neither (mostly background GC).
//
// It is a profiling harness, not part of the test suite: it is compiled
// only with the apiprof build tag, needs the local stores
// (deploy/local/up.sh) and takes a while:
//
//	go test -tags apiprof ./bench/apiprof -run TestProfileCommandAPI -count=1 -v \
//	    -apiprof.duration 20s -apiprof.concurrency 64 -cpuprofile /tmp/cos-cpu.out
//	go tool pprof -tags /tmp/cos-cpu.out                        # server vs client split
//	go tool pprof -tagfocus side=server -top /tmp/cos-cpu.out   # where the server's CPU goes
package apiprof_test

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/companyos/companyos/app"
	"github.com/companyos/companyos/bench/loadgen"
	"github.com/companyos/companyos/internal/stores"
)

var (
	duration    = flag.Duration("apiprof.duration", 20*time.Second, "measured window")
	warmup      = flag.Duration("apiprof.warmup", 3*time.Second, "warmup before the window")
	concurrency = flag.Int("apiprof.concurrency", 64, "closed-loop workers (with -apiprof.rate 0)")
	rate        = flag.Float64("apiprof.rate", 0, "open-loop commands/s; 0 = closed loop")
	tenants     = flag.Int("apiprof.tenants", 8, "tenants")
	mix         = flag.String("apiprof.mix", loadgen.MixCreate, "workload mix: create or mixed")
)

func TestProfileCommandAPI(t *testing.T) {
	pgDSN := stores.TestPostgres(t)
	chAddr, chDB := stores.TestClickHouse(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var a *app.App
	runErr := make(chan error, 1)
	pprof.Do(ctx, pprof.Labels("side", "server"), func(ctx context.Context) {
		var err error
		a, err = app.New(ctx, app.Config{
			Mode: app.ModeDev, DataDir: t.TempDir(),
			HTTPAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", KafkaAddr: "127.0.0.1:0",
			PGDSN: pgDSN, ClickHouseAddr: chAddr, ClickHouseDatabase: chDB,
			// Measure the write path, not the per-tenant limiter.
			RatePerTenant: 1e6,
			Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatalf("app.New: %v", err)
		}
		go func() { runErr <- a.Run(ctx) }() // inherits side=server
	})
	waitReady(t, "http://"+a.MetricsAddr()+"/healthz/ready")

	var res *loadgen.Result
	pprof.Do(ctx, pprof.Labels("side", "client"), func(ctx context.Context) {
		var err error
		res, err = loadgen.Run(ctx, loadgen.Config{
			URL: "http://" + a.HTTPAddr(), Token: a.AdminToken, Tenants: *tenants, Mix: *mix,
			Rate: *rate, Concurrency: *concurrency, Duration: *duration, Warmup: *warmup,
		})
		if err != nil {
			t.Fatalf("loadgen: %v", err)
		}
	})
	t.Logf("%s: sent %d (%.0f/s), ok %.0f/s, errors %d %v", res.Mode, res.Sent, res.SentRate, res.Throughput, res.Errors, res.Statuses)
	t.Logf("latency ms: p50 %.1f p90 %.1f p99 %.1f p99.9 %.1f max %.1f", res.Latency.P50, res.Latency.P90, res.Latency.P99, res.Latency.P999, res.Latency.Max)
	if res.CPU != nil {
		t.Logf("process CPU over the window (server + client together): %.0f%% of one core; machine busy %.0f%%", res.CPU.LoadGenerator, res.CPU.Machine)
	}
	for k, v := range res.ErrorSamples {
		t.Logf("first %s: %s", k, v)
	}

	cancel()
	select {
	case err := <-runErr:
		if err != nil {
			t.Errorf("app.Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("app did not stop within 30s")
	}
	if res.OK == 0 {
		t.Fatal("no command succeeded")
	}
}

func waitReady(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("app not ready at %s after 30s", url)
}
