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

	"github.com/companyos/companyos/bench/fixture"
)

const fixtureUsage = `Usage: companyos fixture graph --tenant pilot-1 [--nodes 50000] [--edges 220000] [--seed 42]
       companyos fixture metering [--tenants 20] [--days 30] [--seed 7] (see companyos fixture metering --help)

graph: generates a realistic company graph (services, dbs, datasets, users, groups,
roles, teams; skewed degrees with a few hubs) and creates it through the real
command path: every node and edge is a command with its own signed receipt.
Re-running with the same seed and tenant replays instead of duplicating.
`

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func runFixture(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "metering" {
		return runFixtureMetering(context.Background(), args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "graph" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(stdout, fixtureUsage)
			return 0
		}
		fmt.Fprint(stderr, fixtureUsage)
		return 2
	}
	fs := flag.NewFlagSet("companyos fixture graph", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		tenant, url, tokenFile, token string
		nodes, edges, batch, conc     int
		seed                          uint64
		asJSON                        bool
	)
	fs.StringVar(&tenant, "tenant", "", "tenant to load into (required)")
	fs.IntVar(&nodes, "nodes", 50000, "number of entities")
	fs.IntVar(&edges, "edges", 220000, "number of relations")
	fs.Uint64Var(&seed, "seed", 42, "generator seed (same seed = same graph)")
	fs.StringVar(&url, "url", "http://127.0.0.1:8080", "command API base URL")
	fs.StringVar(&tokenFile, "token-file", "./.data/admin.token", "file holding a bearer token that may write the tenant")
	fs.StringVar(&token, "token", "", "bearer token (overrides --token-file)")
	fs.IntVar(&batch, "batch", 1000, "commands per batch request")
	fs.IntVar(&conc, "concurrency", 4, "batch requests in flight")
	fs.BoolVar(&asJSON, "json", false, "print the summary as JSON on stdout")
	fs.Usage = func() { fmt.Fprint(stderr, fixtureUsage+"\nFlags (each also COMPANYOS_<NAME>):\n"); fs.PrintDefaults() }
	if err := parse(fs, args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "companyos fixture graph: %v\n", err)
		return 2
	}
	if tenant == "" {
		fmt.Fprintln(stderr, "companyos fixture graph: --tenant is required")
		return 2
	}
	if token == "" {
		raw, err := os.ReadFile(tokenFile)
		if err != nil {
			fmt.Fprintf(stderr, "companyos fixture graph: --token-file: %v\n", err)
			return 2
		}
		token = strings.TrimSpace(string(raw))
	}
	g, err := fixture.Generate(seed, nodes, edges)
	if err != nil {
		fmt.Fprintf(stderr, "companyos fixture graph: %v\n", err)
		return 2
	}
	fmt.Fprintf(stderr, "generated %d entities and %d relations (seed %d); loading into tenant %s at %s\n", len(g.Entities), len(g.Relations), seed, tenant, url)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tty := isTerminal(stderr)
	progress := func(p fixture.Progress) {
		line := fmt.Sprintf("%-9s %7d/%d commands  %6.0f/s  allowed %d  denied %d  failed %d  retries %d",
			p.Phase, p.Done, p.Total, p.CommandsPerSec, p.Allowed, p.Denied, p.Failed, p.Retries)
		if tty {
			fmt.Fprintf(stderr, "\r%s\033[K", line)
		} else {
			fmt.Fprintln(stderr, line)
		}
	}
	res, err := fixture.Load(ctx, g, fixture.LoadConfig{URL: strings.TrimRight(url, "/"), Token: token, Tenant: tenant,
		Batch: batch, Concurrency: conc, KeyPrefix: fmt.Sprintf("fixture-graph-%d-%d-%d", seed, nodes, edges), Progress: progress})
	if tty {
		fmt.Fprintln(stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "companyos fixture graph: %v\n", err)
		return 1
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
	}
	fmt.Fprintf(stderr, "done: %d commands in %.1fs (%.0f/s): %d allowed, %d denied, %d failed, %d replayed\n",
		res.CommandsTotal, res.ElapsedSeconds, res.CommandsPerSec, res.Allowed, res.Denied, res.Failed, res.Replayed)
	for _, f := range res.FirstFailures {
		fmt.Fprintf(stderr, "  failure: %s\n", f)
	}
	hubs := g.Degrees(3)
	fmt.Fprintf(stderr, "hubs: %s (%d), %s (%d), %s (%d)\n", hubs[0].ID, hubs[0].Degree, hubs[1].ID, hubs[1].Degree, hubs[2].ID, hubs[2].Degree)
	if res.Failed > 0 {
		return 1
	}
	return 0
}
