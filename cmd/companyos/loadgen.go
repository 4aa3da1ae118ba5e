package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/companyos/companyos/bench/graphload"
)

const loadgenUsage = `Usage: companyos loadgen --tenant pilot-1 [--qps 50] [--duration 60s] [--queries bench/queries/graph50k.txt]

Sends graph queries (POST /v1/graph/query) at a constant arrival rate (open
loop: latency counts from each request's scheduled send time) and reports
status counts and client latency per query form, next to the server's own
graph_query_ms histogram scraped from --metrics-url before and after.

The query file has one query per line in the graph query language; blank
lines and # comments are ignored, a repeated line is picked more often.
Placeholders bound per request to random ids of the fixture graph
(companyos fixture graph --nodes): $rand_service $rand_user $rand_dataset
$rand_db $rand_group, and $hub (svc:service-0).

Only loopback URLs are accepted.
`

func runLoadgen(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "help" {
		fmt.Fprint(stdout, loadgenUsage)
		return 0
	}
	fs := flag.NewFlagSet("companyos loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg                graphload.Config
		tokenFile, queries string
		nodes              int
		asJSON             bool
	)
	fs.StringVar(&cfg.URL, "url", "http://127.0.0.1:8080", "API base URL (loopback only)")
	fs.StringVar(&cfg.MetricsURL, "metrics-url", "http://127.0.0.1:9090/metrics", `server /metrics for the graph_query_ms histogram (loopback only; "" skips it)`)
	fs.StringVar(&tokenFile, "token-file", "./.data/admin.token", "file holding a bearer token that may read the tenant")
	fs.StringVar(&cfg.Token, "token", "", "bearer token (overrides --token-file)")
	fs.StringVar(&cfg.Tenant, "tenant", "", "tenant to query (required)")
	fs.Float64Var(&cfg.QPS, "qps", 50, "arrival rate, queries per second")
	fs.DurationVar(&cfg.Duration, "duration", time.Minute, "how long queries are sent")
	fs.IntVar(&cfg.MaxRequests, "max-requests", 0, fmt.Sprintf("hard cap on requests (default and maximum %d)", graphload.MaxRequestsCap))
	fs.StringVar(&queries, "queries", "bench/queries/graph50k.txt", "query file")
	fs.IntVar(&nodes, "nodes", 50000, "entities of the fixture graph (--nodes of companyos fixture graph), for placeholder id ranges")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "seed of the query and id choice (same seed, same requests)")
	fs.IntVar(&cfg.Concurrency, "concurrency", 64, "cap on requests in flight (late requests still count from their scheduled time)")
	fs.IntVar(&cfg.Limit, "limit", 100, "page size sent with each query")
	fs.DurationVar(&cfg.Timeout, "timeout", 10*time.Second, "bound on one request")
	fs.BoolVar(&asJSON, "json", false, "print the summary as JSON on stdout")
	fs.Usage = func() { fmt.Fprint(stderr, loadgenUsage+"\nFlags (each also COMPANYOS_<NAME>):\n"); fs.PrintDefaults() }
	if err := parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "companyos loadgen: %v\n", err)
		return 2
	}
	if cfg.Tenant == "" {
		fmt.Fprintln(stderr, "companyos loadgen: --tenant is required")
		return 2
	}
	if cfg.Token == "" {
		raw, err := os.ReadFile(tokenFile)
		if err != nil {
			fmt.Fprintf(stderr, "companyos loadgen: --token-file: %v\n", err)
			return 2
		}
		cfg.Token = strings.TrimSpace(string(raw))
	}
	var err error
	if cfg.Queries, err = graphload.LoadQueries(queries); err != nil {
		fmt.Fprintf(stderr, "companyos loadgen: --queries: %v\n", err)
		return 2
	}
	if cfg.IDs, err = graphload.FixtureIDSpace(nodes); err != nil {
		fmt.Fprintf(stderr, "companyos loadgen: --nodes: %v\n", err)
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "companyos loadgen: invalid configuration:\n  %s\n", strings.ReplaceAll(err.Error(), "\n", "\n  "))
		return 2
	}

	tty := isTerminal(stderr)
	if tty {
		cfg.Progress = func(p graphload.Progress) {
			fmt.Fprintf(stderr, "\r%4.0fs  sent %d  ok %d  errors %d  in flight %d  p99 %.1fms\033[K",
				p.Elapsed.Seconds(), p.Sent, p.OK, p.Errors, p.InFlight, float64(p.P99.Microseconds())/1000)
		}
	}
	fmt.Fprintf(stderr, "%d queries from %s; %g qps for %s against %s (tenant %s)\n",
		len(cfg.Queries), queries, cfg.QPS, cfg.Duration, cfg.URL, cfg.Tenant)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := graphload.Run(ctx, cfg)
	if tty {
		fmt.Fprintln(stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "companyos loadgen: %v\n", err)
		return 1
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(sum)
	} else {
		err = sum.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "companyos loadgen: %v\n", err)
		return 1
	}
	if sum.OK == 0 {
		fmt.Fprintln(stderr, "companyos loadgen: no query succeeded")
		return 1
	}
	return 0
}
