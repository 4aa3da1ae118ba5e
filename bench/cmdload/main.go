// Command cmdload is a load generator for the CompanyOS command API
// (POST /v1/commands). It parses flags, hands them to package loadgen and
// prints the summary; see bench/README.md for how the numbers were taken.
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
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/companyos/companyos/bench/loadgen"
)

const usage = `cmdload — HTTP load generator for the CompanyOS command API (loopback only).

Usage:
  cmdload [flags]

Open loop (--rate R > 0): requests are scheduled at R/s on a clock,
independent of responses; latency counts from the scheduled start, so
queueing is measured, not omitted. Closed loop (--rate 0): --concurrency
workers send back to back, to find the saturation throughput.

Examples:
  cmdload --url http://127.0.0.1:8080 --token-file .data/admin.token --rate 1000 --duration 60s
  cmdload --rate 0 --concurrency 128 --tenants 16 --json

Flags:
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cmdload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg loadgen.Config
	var tokenFile string
	var asJSON bool
	fs.StringVar(&cfg.URL, "url", "http://127.0.0.1:8080", "API base URL; must be loopback (localhost, 127.0.0.0/8, ::1)")
	fs.StringVar(&tokenFile, "token-file", "./.data/admin.token", "file holding the bearer token (companyos dev writes <data-dir>/admin.token)")
	fs.IntVar(&cfg.Tenants, "tenants", 8, "spread load round robin over tenants bench-0..bench-(N-1)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "offered commands/s, open loop; 0 = closed-loop saturation with --concurrency workers")
	fs.IntVar(&cfg.Concurrency, "concurrency", 64, "closed-loop workers")
	fs.IntVar(&cfg.MaxInFlight, "max-inflight", 10000, "open loop: cap on outstanding requests (waiting for a slot counts as latency)")
	fs.DurationVar(&cfg.Duration, "duration", 30*time.Second, "measured window")
	fs.DurationVar(&cfg.Warmup, "warmup", 3*time.Second, "load sent before the measured window, not recorded")
	fs.StringVar(&cfg.Mix, "mix", loadgen.MixCreate, "workload: create (entity.create, unique ids) or mixed (50% create, 30% update, 20% link of created entities)")
	fs.StringVar(&cfg.RunID, "run-id", "", "prefix of entity ids, so runs don't collide (default random)")
	fs.Int64Var(&cfg.MaxRequests, "max-requests", 2_000_000, "hard cap on requests sent, warmup included")
	fs.DurationVar(&cfg.Timeout, "timeout", 15*time.Second, "per-request timeout")
	fs.IntVar(&cfg.ServerPID, "server-pid", 0, "server process id: report its CPU use over the window next to ours (Linux /proc)")
	fs.BoolVar(&asJSON, "json", false, "print the summary as JSON")
	progress := fs.Bool("progress", isTerminal(os.Stderr), "print progress to stderr once a second (default: when stderr is a terminal)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cmdload: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	// Refuse a non-loopback target before touching anything else.
	if _, err := loadgen.CheckLoopbackURL(cfg.URL); err != nil {
		fmt.Fprintf(stderr, "cmdload: --url: %v\n", err)
		return 2
	}
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		fmt.Fprintf(stderr, "cmdload: --token-file: %v\n", err)
		return 2
	}
	cfg.Token = strings.TrimSpace(string(tok))
	if *progress {
		cfg.Progress = func(p loadgen.Progress) {
			phase := "run   "
			if p.Warmup {
				phase = "warmup"
			}
			msf := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			fmt.Fprintf(stderr, "%s %4.0fs  sent %8d  ok %8d  err %5d  in-flight %5d  %6.0f/s sent  %6.0f/s ok  p99 %6.1fms (last 1s: p99 %6.1f max %6.1f)  cpu%% gen %3.0f srv %3.0f machine %3.0f\n",
				phase, p.Elapsed.Seconds(), p.Sent, p.OK, p.Errors, p.InFlight, p.SentRate, p.OKRate,
				msf(p.P99), msf(p.IntervalP99), msf(p.IntervalMax), p.LoadGenCPU, p.ServerCPU, p.MachineBusy)
		}
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "cmdload: invalid flags:\n  %s\n", strings.ReplaceAll(err.Error(), "\n", "\n  "))
		return 2
	}
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "cmdload: %v\n", err)
		return 1
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			fmt.Fprintf(stderr, "cmdload: %v\n", err)
			return 1
		}
	} else {
		printSummary(stdout, res)
	}
	if res.Sent == 0 {
		fmt.Fprintln(stderr, "cmdload: nothing was measured (interrupted during warmup, or --max-requests reached)")
		return 1
	}
	return 0
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func printSummary(w io.Writer, r *loadgen.Result) {
	mode := fmt.Sprintf("closed loop, %d workers", r.Concurrency)
	offered := "n/a (closed loop)"
	if r.Mode == "open-loop" {
		mode = "open loop"
		offered = fmt.Sprintf("%.0f/s", r.OfferedRate)
	}
	fmt.Fprintf(w, "cmdload: %s, %d tenants, mix=%s, run %s, %s\n", mode, r.Tenants, r.Mix, r.RunID, r.URL)
	if r.Interrupted {
		fmt.Fprintln(w, "  (interrupted: partial window)")
	}
	if r.HitMaxReqs {
		fmt.Fprintln(w, "  (stopped at --max-requests: partial window)")
	}
	fmt.Fprintf(w, "  window         %.1fs measured after %.1fs warmup\n", r.Window, r.Warmup)
	fmt.Fprintf(w, "  offered        %s; sent %d (%.1f/s)\n", offered, r.Sent, r.SentRate)
	fmt.Fprintf(w, "  throughput     %.1f ok/s (%d ok)\n", r.Throughput, r.OK)
	fmt.Fprintf(w, "  errors         %d (%.3f%%)\n", r.Errors, 100*r.ErrorRate)
	codes := make([]string, 0, len(r.Statuses))
	for k := range r.Statuses {
		codes = append(codes, k)
	}
	slices.Sort(codes)
	var parts []string
	for _, k := range codes {
		parts = append(parts, fmt.Sprintf("%s=%d", k, r.Statuses[k]))
	}
	fmt.Fprintf(w, "  status         %s\n", strings.Join(parts, " "))
	for _, k := range codes {
		if s, ok := r.ErrorSamples[k]; ok {
			fmt.Fprintf(w, "    first %s: %s\n", k, s)
		}
	}
	lat := func(name string, l loadgen.Latency, extra string) {
		fmt.Fprintf(w, "  %-14s p50 %.1f  p90 %.1f  p95 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f (ms)%s\n",
			name, l.P50, l.P90, l.P95, l.P99, l.P999, l.Max, l.Mean, extra)
	}
	lat("latency", r.Latency, "")
	if len(r.ByType) > 1 {
		types := make([]string, 0, len(r.ByType))
		for t := range r.ByType {
			types = append(types, t)
		}
		slices.Sort(types)
		for _, t := range types {
			tr := r.ByType[t]
			lat(t, tr.Latency, fmt.Sprintf("  sent %d, ok %d", tr.Sent, tr.OK))
		}
	}
	fmt.Fprintf(w, "  in-flight      max %d", r.MaxInFlight)
	if r.Mode == "open-loop" {
		fmt.Fprintf(w, "; max scheduler lag %.1fms", r.MaxSchedulerLagMS)
	}
	fmt.Fprintln(w)
	if r.Unfinished > 0 {
		fmt.Fprintf(w, "  unfinished     %d requests still outstanding at the end (counted as errors)\n", r.Unfinished)
	}
	if c := r.CPU; c != nil {
		fmt.Fprintf(w, "  cpu            load generator %.0f%%", c.LoadGenerator)
		if c.ServerPID > 0 {
			fmt.Fprintf(w, ", server %.0f%% (pid %d, rss %.0f MiB)", c.Server, c.ServerPID, c.ServerRSSMiB)
		}
		fmt.Fprintf(w, " of one core; %d cores", c.Cores)
		if c.Machine > 0 {
			other := c.Machine - c.LoadGenerator - c.Server
			fmt.Fprintf(w, "; machine busy %.0f%% (other processes ~%.0f%%)", c.Machine, max(other, 0))
		}
		fmt.Fprintln(w)
	}
}
