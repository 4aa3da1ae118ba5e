// Command meterload is a load generator for metering ingest
// (POST /v1/metering/events). It posts CloudEvents batches over HTTP at a
// target event rate (open loop) or as fast as --concurrency workers can
// (closed loop), and reports accepted events/s and request latency
// percentiles.
//
// Without --url it measures an in-process stack: the metering API on a
// loopback listener in front of an embedded kfake broker over TCP, wired
// like `companyos dev` (franz-go producer, linger 0, acks=all), so the
// number is HTTP → Kafka acknowledgement. --serve runs only that stack (for
// a client in another process, whose CPU is then measured apart).
//
// --e2e measures the whole path of a running `companyos dev` (or serve):
// HTTP → Kafka → cogs projector → ClickHouse. It checks zero loss (events
// accepted with a 202 against the run's distinct events in metering_events
// and in usage_hourly_current, counts and exact sums), counts the DLQ
// records produced during the run, and measures freshness: every
// --sample-every'th event is a probe whose POST acknowledgement → visible in
// ClickHouse latency is polled for (see e2e.go).
// See bench/README.md for the recorded numbers.
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/bench/loadgen"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/httpx"
	"github.com/companyos/companyos/metering"
)

const usage = `meterload — HTTP load generator for metering ingest (loopback only).

Usage:
  meterload [flags]                        in-process stack: API + embedded Kafka
  meterload --serve --token-file F         only the stack; prints its URL
  meterload --url URL --token-file F       against a running server
  meterload --e2e --url URL --token-file F --kafka-brokers B --clickhouse-database D
                                           end to end against companyos dev:
                                           HTTP → Kafka → ClickHouse (loss, DLQ, freshness)

Open loop (--rate R > 0): a batch is scheduled every --batch/R seconds on a
clock, whatever the responses do; latency counts from the scheduled time, so
queueing is measured, not omitted; at most --concurrency requests are in
flight. Closed loop (--rate 0): --concurrency workers post back to back.

Flags:
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type config struct {
	url, tokenFile, dataDir string
	serve, asJSON           bool
	rate                    float64
	batch, concurrency      int
	tenants, partitions     int
	duration, warmup        time.Duration
	serverPID               int
	cpuProfile              string
	e2e                     e2eConfig
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("meterload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.StringVar(&c.url, "url", "", "API base URL (loopback only); empty = start the in-process stack")
	fs.StringVar(&c.tokenFile, "token-file", "", "bearer token file: read with --url, written with --serve")
	fs.BoolVar(&c.serve, "serve", false, "run only the in-process stack until interrupted")
	fs.StringVar(&c.dataDir, "data-dir", "", "embedded broker data directory (default: a temporary one, removed at exit)")
	fs.Float64Var(&c.rate, "rate", 0, "offered events/s, open loop; 0 = closed loop")
	fs.IntVar(&c.batch, "batch", 500, "events per request (1 sends single application/cloudevents+json events)")
	fs.IntVar(&c.concurrency, "concurrency", 8, "closed-loop workers; open-loop cap on requests in flight")
	fs.IntVar(&c.tenants, "tenants", 8, "spread events round robin over tenants bench-0..bench-(N-1)")
	fs.IntVar(&c.partitions, "partitions", 6, "partitions of metering.events.v1 (in-process stack)")
	fs.DurationVar(&c.duration, "duration", 20*time.Second, "measured window")
	fs.DurationVar(&c.warmup, "warmup", 3*time.Second, "load sent before the measured window, not recorded")
	fs.IntVar(&c.serverPID, "server-pid", 0, "with --url: also report that process's CPU over the window (Linux)")
	fs.BoolVar(&c.asJSON, "json", false, "print the summary as JSON")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of this process over the measured window")
	c.e2e.flags(fs)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if c.batch < 1 || c.batch > metering.MaxBatchLimit || c.concurrency < 1 || c.tenants < 1 || c.duration <= 0 {
		fmt.Fprintf(stderr, "meterload: --batch must be 1..%d, --concurrency, --tenants and --duration positive\n", metering.MaxBatchLimit)
		return 2
	}

	if c.e2e.enabled {
		if err := c.e2e.validate(c); err != nil {
			fmt.Fprintln(stderr, "meterload:", err)
			return 2
		}
	}
	var token string
	if c.url == "" {
		st, err := startStack(ctx, c)
		if err != nil {
			fmt.Fprintln(stderr, "meterload:", err)
			return 1
		}
		defer st.close()
		c.url, token = st.url, st.token
		if c.serve {
			if c.tokenFile != "" {
				if err := os.WriteFile(c.tokenFile, []byte(token+"\n"), 0o600); err != nil {
					fmt.Fprintln(stderr, "meterload:", err)
					return 1
				}
			}
			fmt.Fprintf(stdout, "serving %s (pid %d, kafka %v); token in %s\n", st.url, os.Getpid(), st.brokers, c.tokenFile)
			<-ctx.Done()
			return 0
		}
	} else {
		if _, err := loadgen.CheckLoopbackURL(c.url); err != nil {
			fmt.Fprintln(stderr, "meterload:", err)
			return 2
		}
		raw, err := os.ReadFile(c.tokenFile)
		if err != nil {
			fmt.Fprintln(stderr, "meterload: --token-file:", err)
			return 2
		}
		token = strings.TrimSpace(string(raw))
	}

	if c.e2e.enabled {
		return runE2E(ctx, c, token, stdout, stderr)
	}
	res := load(ctx, c, token)
	if c.asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
	} else {
		res.print(stdout)
	}
	if res.EventsPerSec == 0 {
		return 1
	}
	return 0
}

// stack is the in-process system under test.
type stack struct {
	url, token string
	brokers    []string
	close      func()
}

func startStack(ctx context.Context, c config) (*stack, error) {
	dir := c.dataDir
	var cleanup []func()
	closeAll := func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "meterload-")
		if err != nil {
			return nil, err
		}
		dir = d
		cleanup = append(cleanup, func() { _ = os.RemoveAll(d) })
	}
	b, err := events.StartBroker(events.BrokerConfig{Addr: "127.0.0.1:0", DataDir: filepath.Clean(dir), Partitions: c.partitions})
	if err != nil {
		closeAll()
		return nil, err
	}
	cleanup = append(cleanup, b.Close)
	producer, err := kgo.NewClient(kgo.SeedBrokers(b.Addrs()...), kgo.ProducerLinger(0), kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	if err != nil {
		closeAll()
		return nil, err
	}
	cleanup = append(cleanup, producer.Close)
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := events.EnsureTopics(tctx, producer, events.TopicsConfig{Partitions: int32(c.partitions)}); err != nil {
		closeAll()
		return nil, err
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		closeAll()
		return nil, err
	}
	iss := auth.NewIssuer("meterload", key)
	verifier, err := auth.NewVerifier(auth.VerifierConfig{Keys: iss.KeySet(), Issuer: "meterload"})
	if err != nil {
		closeAll()
		return nil, err
	}
	token, err := iss.Issue(auth.IssueRequest{Principal: "svc:meterload", Tenants: []string{auth.WildcardTenant},
		Roles: []string{metering.PermissionWrite}, TTL: 24 * time.Hour})
	if err != nil {
		closeAll()
		return nil, err
	}
	reg := prometheus.NewRegistry()
	api, err := metering.NewAPI(metering.Config{Producer: producer, Tokens: verifier, Metrics: httpx.NewMetrics(reg), Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		closeAll()
		return nil, err
	}
	mux := http.NewServeMux()
	api.Register(mux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		closeAll()
		return nil, err
	}
	// The same server timeouts as the app's API listener.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 15 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 120 * time.Second, MaxHeaderBytes: 64 << 10}
	go func() { _ = srv.Serve(ln) }()
	cleanup = append(cleanup, func() {
		// Drain requests cut off at the end of the run before the producer
		// closes under them.
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	return &stack{url: "http://" + ln.Addr().String(), token: token, brokers: b.Addrs(), close: closeAll}, nil
}

// Result is the summary of a run.
type Result struct {
	Mode          string         `json:"mode"`
	OfferedPerSec float64        `json:"offered_events_per_sec,omitempty"`
	Batch         int            `json:"batch"`
	Concurrency   int            `json:"concurrency"`
	WindowSec     float64        `json:"window_s"`
	Requests      uint64         `json:"requests"`
	EventsOK      uint64         `json:"events_accepted"`
	EventsPerSec  float64        `json:"events_per_sec"`
	RequestsPerS  float64        `json:"requests_per_sec"`
	Status        map[string]int `json:"status"`
	FirstError    string         `json:"first_error,omitempty"`
	LatencyMS     latency        `json:"latency_ms"`
	MaxInFlight   int64          `json:"max_in_flight"`
	SchedLagMS    float64        `json:"open_loop_max_lag_ms,omitempty"`
	CPU           cpu            `json:"cpu"`
	PeakRSSMiB    float64        `json:"peak_rss_mib"` // this process (VmHWM)
	Machine       string         `json:"machine"`
	Timeline      []second       `json:"timeline"`
}

type latency struct {
	P50, P90, P95, P99, P999, Max, Mean float64
}

type cpu struct {
	// Process is this process's CPU over the window, % of one core; with
	// the in-process stack it includes the API, the broker and the client.
	Process float64 `json:"process_pct"`
	Server  float64 `json:"server_pct,omitempty"` // --server-pid
	Machine float64 `json:"machine_busy_pct"`     // whole machine (/proc/stat)
	Cores   int     `json:"cores"`
}

type second struct {
	T      int     `json:"t_s"`
	Events uint64  `json:"events"`
	P99    float64 `json:"p99_ms"`
	// CPU in that second, % of one core: this process, and the machine
	// (so others = machine - process - server).
	Self    float64 `json:"cpu_self_pct"`
	Server  float64 `json:"cpu_server_pct,omitempty"`
	Machine float64 `json:"cpu_machine_pct"`
}

func (r *Result) print(w io.Writer) {
	fmt.Fprintf(w, "mode %s, batch %d, concurrency %d, window %.1fs, %s\n", r.Mode, r.Batch, r.Concurrency, r.WindowSec, r.Machine)
	if r.OfferedPerSec > 0 {
		fmt.Fprintf(w, "offered %.0f events/s (scheduler max lag %.1f ms)\n", r.OfferedPerSec, r.SchedLagMS)
	}
	fmt.Fprintf(w, "accepted %d events in %d requests: %.0f events/s (%.0f requests/s), max in flight %d\n",
		r.EventsOK, r.Requests, r.EventsPerSec, r.RequestsPerS, r.MaxInFlight)
	codes := make([]string, 0, len(r.Status))
	for k := range r.Status {
		codes = append(codes, k)
	}
	sort.Strings(codes)
	for _, k := range codes {
		fmt.Fprintf(w, "  %s: %d\n", k, r.Status[k])
	}
	if r.FirstError != "" {
		fmt.Fprintf(w, "  first error: %.300s\n", r.FirstError)
	}
	l := r.LatencyMS
	fmt.Fprintf(w, "request latency ms: p50 %.1f  p90 %.1f  p95 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f\n",
		l.P50, l.P90, l.P95, l.P99, l.P999, l.Max, l.Mean)
	fmt.Fprintf(w, "cpu (%% of one core, %d cores): this process %.0f%%", r.CPU.Cores, r.CPU.Process)
	if r.CPU.Server > 0 {
		fmt.Fprintf(w, ", server %.0f%%", r.CPU.Server)
	}
	fmt.Fprintf(w, ", machine busy %.0f%%; peak RSS %.0f MiB\n", r.CPU.Machine, r.PeakRSSMiB)
}

// runner holds the shared state of one run.
type runner struct {
	c      config
	client *http.Client
	url    string
	token  string
	runID  string
	seq    atomic.Uint64
	// source of event n (default "//meterload/agent-<n%64>"); team, when
	// set, is added as a tag. The e2e mode makes both unique to the run.
	source func(n uint64) string
	team   string
	e2e    *e2eRun // nil unless --e2e

	recording atomic.Bool
	hist      loadgen.Histogram
	events    atomic.Uint64
	inFlight  atomic.Int64
	maxFlight atomic.Int64

	mu       sync.Mutex
	status   map[string]int
	firstErr string
	perSec   map[int]*secondStats
	start    time.Time
}

type secondStats struct {
	events uint64
	hist   loadgen.Histogram
	cpu    cpu
}

func load(ctx context.Context, c config, token string) *Result {
	return loadWith(ctx, c, token, nil)
}

// loadWith runs the load; e (optional) is told about every accepted event.
func loadWith(ctx context.Context, c config, token string, e *e2eRun) *Result {
	r := &runner{c: c, url: strings.TrimRight(c.url, "/") + "/v1/metering/events", token: token, e2e: e,
		source: func(n uint64) string { return "//meterload/agent-" + strconv.FormatUint(n%64, 10) },
		client: &http.Client{Transport: loadgen.NewTransport(c.concurrency*2, 30*time.Second), Timeout: 60 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		runID: strconv.FormatInt(time.Now().UnixNano(), 36), status: map[string]int{}, perSec: map[int]*secondStats{}}
	if e != nil {
		r.runID, r.source, r.team = e.runID, e.source, e.team
	}
	total := c.warmup + c.duration
	ctx, cancel := context.WithTimeout(ctx, total)
	defer cancel()
	r.start = time.Now()
	var cpu0, cpu1 cpuSample
	var profiling bool
	time.AfterFunc(c.warmup, func() {
		cpu0 = sampleCPU(c.serverPID)
		r.recording.Store(true)
		if c.cpuProfile != "" {
			if f, err := os.Create(c.cpuProfile); err == nil && pprof.StartCPUProfile(f) == nil {
				profiling = true
			}
		}
	})
	defer func() {
		if profiling {
			pprof.StopCPUProfile()
		}
	}()
	// Sample CPU every second, to tell quiet seconds from contended ones.
	go func() {
		prev := sampleCPU(c.serverPID)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				cur := sampleCPU(c.serverPID)
				sec := int(time.Since(r.start).Seconds()) - 1
				r.mu.Lock()
				r.stats(sec).cpu = cur.since(prev)
				r.mu.Unlock()
				prev = cur
			}
		}
	}()
	mode := "closed loop"
	var lag time.Duration
	if c.rate > 0 {
		mode = "open loop"
		lag = r.openLoop(ctx)
	} else {
		r.closedLoop(ctx)
	}
	cpu1 = sampleCPU(c.serverPID)
	window := time.Since(r.start) - c.warmup
	if window > c.duration {
		window = c.duration
	}
	res := &Result{Mode: mode, OfferedPerSec: c.rate, Batch: c.batch, Concurrency: c.concurrency, WindowSec: window.Seconds(),
		Requests: r.hist.Count(), EventsOK: r.events.Load(), Status: r.status, FirstError: r.firstErr,
		MaxInFlight: r.maxFlight.Load(), SchedLagMS: ms(lag),
		Machine: fmt.Sprintf("%d cores, %s/%s, %s", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())}
	res.EventsPerSec = float64(res.EventsOK) / window.Seconds()
	res.RequestsPerS = float64(res.Requests) / window.Seconds()
	h := &r.hist
	res.LatencyMS = latency{P50: ms(h.Quantile(.5)), P90: ms(h.Quantile(.9)), P95: ms(h.Quantile(.95)), P99: ms(h.Quantile(.99)),
		P999: ms(h.Quantile(.999)), Max: ms(h.Max()), Mean: ms(h.Mean())}
	res.CPU = cpu1.since(cpu0)
	res.PeakRSSMiB = peakRSSMiB()
	secs := make([]int, 0, len(r.perSec))
	for s := range r.perSec {
		secs = append(secs, s)
	}
	sort.Ints(secs)
	for _, s := range secs {
		st := r.perSec[s]
		if s < int(c.warmup.Seconds()) {
			continue
		}
		res.Timeline = append(res.Timeline, second{T: s, Events: st.events, P99: ms(st.hist.Quantile(.99)),
			Self: st.cpu.Process, Server: st.cpu.Server, Machine: st.cpu.Machine})
	}
	return res
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (r *runner) closedLoop(ctx context.Context) {
	var wg sync.WaitGroup
	for range r.c.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				r.do(r.requestContext(ctx), time.Now())
			}
		}()
	}
	wg.Wait()
}

// openLoop schedules a request every batch/rate seconds; a slot in the
// in-flight cap is waited for, and that wait counts as latency.
func (r *runner) openLoop(ctx context.Context) time.Duration {
	interval := time.Duration(float64(r.c.batch) / r.c.rate * float64(time.Second))
	slots := make(chan struct{}, r.c.concurrency)
	var wg sync.WaitGroup
	var maxLag time.Duration
	start := time.Now()
	for i := 0; ; i++ {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			select {
			case <-ctx.Done():
				wg.Wait()
				return maxLag
			case <-time.After(d):
			}
		} else if lag := -d; lag > maxLag && r.recording.Load() {
			maxLag = lag
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return maxLag
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			r.do(r.requestContext(ctx), at)
		}()
	}
}

// requestContext is the context of one request. In e2e mode a request in
// flight when the run ends is completed, not cut off: its events may already
// be in Kafka, and the loss check must know whether they were accepted.
func (r *runner) requestContext(ctx context.Context) context.Context {
	if r.e2e != nil {
		return context.WithoutCancel(ctx)
	}
	return ctx
}

// body builds a batch of unique, valid events and appends their sequence
// numbers to ns. Event n has id <run>-<n>, tenant bench-<n%tenants> and
// quantity <n%1000>.25.
func (r *runner) body(ns []uint64) ([]byte, []uint64) {
	var b bytes.Buffer
	b.Grow(r.c.batch * 260)
	now := time.Now().UTC().Format(time.RFC3339Nano)
	if r.c.batch > 1 {
		b.WriteByte('[')
	}
	for i := range r.c.batch {
		n := r.seq.Add(1)
		ns = append(ns, n)
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"specversion":"1.0","id":"`)
		b.WriteString(r.runID)
		b.WriteByte('-')
		b.WriteString(strconv.FormatUint(n, 10))
		b.WriteString(`","source":"`)
		b.WriteString(r.source(n))
		b.WriteString(`","type":"compute.cpu_seconds","subject":"bench-`)
		b.WriteString(strconv.FormatUint(n%uint64(r.c.tenants), 10))
		b.WriteString(`","time":"`)
		b.WriteString(now)
		b.WriteString(`","data":{"quantity":"`)
		b.WriteString(strconv.FormatUint(n%1000, 10))
		b.WriteString(`.25","unit":"second","tags":{"service":"svc-`)
		b.WriteString(strconv.FormatUint(n%16, 10))
		b.WriteString(`","region":"eu-west-1"`)
		if r.team != "" {
			b.WriteString(`,"team":"`)
			b.WriteString(r.team)
			b.WriteByte('"')
		}
		b.WriteString(`}}}`)
	}
	if r.c.batch > 1 {
		b.WriteByte(']')
	}
	return b.Bytes(), ns
}

func (r *runner) do(ctx context.Context, scheduled time.Time) {
	body, ns := r.body(make([]uint64, 0, r.c.batch))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return
	}
	req.Header.Set("Authorization", "Bearer "+r.token)
	if r.c.batch > 1 {
		req.Header.Set("Content-Type", metering.MediaTypeBatch)
	} else {
		req.Header.Set("Content-Type", metering.MediaTypeEvent)
	}
	n := r.inFlight.Add(1)
	for m := r.maxFlight.Load(); n > m && !r.maxFlight.CompareAndSwap(m, n); m = r.maxFlight.Load() {
	}
	resp, err := r.client.Do(req)
	r.inFlight.Add(-1)
	lat := time.Since(scheduled)
	if ctx.Err() != nil {
		if resp != nil {
			resp.Body.Close()
		}
		return // cut off by the end of the run: neither a result nor an error
	}
	acked := time.Now()
	status, accepted := "", 0
	var detail string
	known := false // whether each event of the request was produced is known
	if err != nil {
		status, detail = "transport error", err.Error()
	} else {
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		status = strconv.Itoa(resp.StatusCode)
		if resp.StatusCode == http.StatusAccepted {
			var ir struct {
				Accepted []struct {
					Index     int  `json:"index"`
					Duplicate bool `json:"duplicate"`
				} `json:"accepted"`
			}
			if json.Unmarshal(raw, &ir) == nil {
				known = true // rejected items were never produced
				for _, a := range ir.Accepted {
					if !a.Duplicate {
						accepted++
						if r.e2e != nil && a.Index >= 0 && a.Index < len(ns) {
							r.e2e.accepted(ns[a.Index], scheduled, acked, r.c.tenants)
						}
					}
				}
			}
		} else {
			detail = string(raw)
		}
	}
	if r.e2e != nil && !known {
		r.e2e.unknown.Add(uint64(len(ns)))
	}
	if !r.recording.Load() {
		return
	}
	r.hist.Record(lat)
	r.events.Add(uint64(accepted))
	sec := int(time.Since(r.start).Seconds())
	r.mu.Lock()
	r.status[status]++
	if detail != "" && r.firstErr == "" {
		r.firstErr = status + ": " + detail
	}
	st := r.stats(sec)
	st.events += uint64(accepted)
	r.mu.Unlock()
	st.hist.Record(lat)
}

// stats returns the second's stats; r.mu must be held.
func (r *runner) stats(sec int) *secondStats {
	st := r.perSec[sec]
	if st == nil {
		st = &secondStats{}
		r.perSec[sec] = st
	}
	return st
}

// cpuSample is CPU time used so far by this process, the server process and
// the machine (Linux /proc; zero elsewhere).
type cpuSample struct {
	at                   time.Time
	self, server, busy   time.Duration
	haveServer, haveBusy bool
}

func sampleCPU(serverPID int) cpuSample {
	s := cpuSample{at: time.Now()}
	s.self, _ = procCPU("self")
	if serverPID > 0 {
		s.server, s.haveServer = procCPU(strconv.Itoa(serverPID))
	}
	s.busy, s.haveBusy = machineBusy()
	return s
}

func (s cpuSample) since(old cpuSample) cpu {
	wall := s.at.Sub(old.at).Seconds()
	pct := func(d time.Duration) float64 { return 100 * d.Seconds() / wall }
	c := cpu{Process: pct(s.self - old.self), Cores: runtime.NumCPU()}
	if s.haveServer && old.haveServer {
		c.Server = pct(s.server - old.server)
	}
	if s.haveBusy && old.haveBusy {
		c.Machine = pct(s.busy - old.busy)
	}
	return c
}

const clockTick = 100 // USER_HZ on Linux

// procCPU reads utime+stime of /proc/<pid>/stat.
func procCPU(pid string) (time.Duration, bool) {
	raw, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, false
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	k, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(u+k) * time.Second / clockTick, true
}

// peakRSSMiB reads VmHWM of this process (Linux).
func peakRSSMiB() float64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}

// machineBusy reads the non-idle time of all CPUs from /proc/stat.
func machineBusy() (time.Duration, bool) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, false
	}
	var busy uint64
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest time is already in user
			break
		}
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTick, true
}
