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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/companyos/companyos/commands"
	"github.com/companyos/companyos/policy"
)

// runPolicySimulate is `companyos policy simulate`.
func runPolicySimulate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("companyos policy simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var brokers listFlag = listFlag{"127.0.0.1:9092"}
	bundle := fs.String("bundle", "", "candidate policy bundle directory (VERSION, *.rego, data.json) (required)")
	since := fs.String("since", "7d", `replay decisions made in this window before now ("7d", "36h", "0" for the whole log)`)
	tenant := fs.String("tenant", "", "only this tenant (default: all)")
	examples := fs.Int("examples", 3, "examples kept per group of changed decisions")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	fs.Var(&brokers, "kafka-brokers", "Kafka seed brokers (the dev server's embedded broker by default)")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: companyos policy simulate --bundle <dir> [--since 7d] [flags]

Blast radius of a candidate policy bundle: replays the commands recorded in
companyos.events.v1 (each receipt holds the command, the authenticated
principal and its time; tenant state is rebuilt from the receipts before it)
against the candidate and reports every decision that would change, grouped
by direction and the candidate's deciding rules, with counts and examples.
Nothing is written.

Exit status: 0 no decision changes, 1 some decisions change, 2 usage or
infrastructure error (unreadable bundle, Kafka unreachable).

Flags (each also COMPANYOS_<NAME>):
`)
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "companyos policy simulate: %v\n", err)
		return 2
	}
	if *bundle == "" {
		fmt.Fprintln(stderr, "companyos policy simulate: --bundle: required")
		return 2
	}
	window, err := parseWindow(*since)
	if err != nil {
		fmt.Fprintf(stderr, "companyos policy simulate: --since: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A generous bound: a busy machine must not turn slow evaluations into
	// "changed" decisions (fail closed) in the report.
	engine, err := policy.New(ctx, policy.Config{Bundle: os.DirFS(*bundle), Timeout: policy.ToolTimeout})
	if err != nil {
		fmt.Fprintf(stderr, "companyos policy simulate: --bundle %s: %v\n", *bundle, err)
		return 2
	}
	cfg := commands.SimulateConfig{Brokers: brokers, Candidate: policy.NewReloadable(engine, policy.ReloadableConfig{}),
		Tenant: *tenant, Examples: *examples}
	if window > 0 {
		cfg.Since = time.Now().Add(-window)
	}
	tty := isTerminal(stderr)
	if tty {
		start := time.Now()
		cfg.Progress = func(read, _ int64) {
			fmt.Fprintf(stderr, "\r  %d receipts replayed (%.0f/s)   ", read, float64(read)/time.Since(start).Seconds())
		}
	}
	rep, err := commands.Simulate(ctx, cfg)
	if tty {
		fmt.Fprint(stderr, "\r\033[K")
	}
	if err != nil {
		fmt.Fprintf(stderr, "companyos policy simulate: %v\n", err)
		return 2
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	} else {
		printSimulation(stdout, rep)
	}
	if rep.Changed > 0 {
		return 1
	}
	return 0
}

func printSimulation(w io.Writer, rep commands.SimulationReport) {
	fmt.Fprintf(w, "candidate bundle %s", rep.CandidateVersion)
	if rep.Since != "" {
		fmt.Fprintf(w, ", decisions since %s", rep.Since)
	}
	fmt.Fprintf(w, "\n  %d receipts read, %d decisions re-evaluated, %d skipped (system receipts, no recorded principal, outside the window) in %.1fs\n",
		rep.Receipts, rep.Evaluated, rep.Skipped, rep.Seconds)
	fmt.Fprintf(w, "  %d unchanged, %d would change", rep.Unchanged, rep.Changed)
	if rep.FailedClosed > 0 {
		fmt.Fprintf(w, ", %d evaluations failed closed (timeout or error; not counted as changes)", rep.FailedClosed)
	}
	fmt.Fprintln(w)
	for _, g := range rep.Groups {
		rules := g.Rules
		if rules == "" {
			rules = "(no rule)"
		}
		fmt.Fprintf(w, "\n  %s → %s  ×%d  by %s\n", g.From, g.To, g.Count, rules)
		for _, ex := range g.Examples {
			fmt.Fprintf(w, "    %s seq %d  %s %s by %s  (live %s, receipt %s)\n", ex.Tenant, ex.Seq, ex.Action, ex.Subject, ex.Actor, ex.LiveBundle, ex.ReceiptID)
		}
	}
	if rep.Changed == 0 {
		fmt.Fprintln(w, "\nno decision would change")
	}
}

// parseWindow parses "7d", "36h", "90m" or "0".
func parseWindow(s string) (time.Duration, error) {
	if s == "" || s == "0" {
		return 0, nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q: want e.g. 7d, 36h or 0", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	dur, err := time.ParseDuration(s)
	if err != nil || dur < 0 {
		return 0, fmt.Errorf("%q: want e.g. 7d, 36h or 0", s)
	}
	return dur, nil
}
