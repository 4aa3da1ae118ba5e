// Package graphload drives the graph query API (POST /v1/graph/query) with
// an open-loop, constant-arrival-rate load of queries read from a file, and
// reports what a caller sees (status counts, latency per query form) next to
// what the server measured (its graph_query_ms histogram, diffed between a
// scrape before and after the run).
//
// Requests are scheduled on a clock, independent of responses, and each
// latency counts from the request's scheduled send time: time a request
// spent waiting behind a slow server or a full concurrency cap is part of
// its latency instead of being silently omitted ("coordinated omission").
//
// It talks to the product only over HTTP, and only on loopback: it refuses
// any other host, and its dialer re-checks the address it connects to. It
// does not touch the fixture package's internals; FixtureIDSpace repeats
// its per-kind arithmetic.
package graphload

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config configures one run.
type Config struct {
	// URL is the API base URL (required); queries go to URL +
	// /v1/graph/query. Its host must be loopback.
	URL string
	// MetricsURL is the server's Prometheus endpoint, e.g.
	// http://127.0.0.1:9090/metrics (optional; empty skips the server-side
	// histogram). Its host must be loopback.
	MetricsURL string
	// Token is the bearer token (required).
	Token string
	// Tenant is the tenant queried (required).
	Tenant string
	// QPS is the arrival rate in queries per second (required, > 0).
	QPS float64
	// Duration is how long queries are scheduled for (required, > 0).
	Duration time.Duration
	// MaxRequests is a hard cap on the requests of a run (optional, default
	// and maximum MaxRequestsCap); the run ends at Duration or MaxRequests,
	// whichever comes first.
	MaxRequests int
	// Queries are the queries, picked uniformly at random per request (a
	// line repeated in the file is picked more often) (required).
	Queries []Query
	// IDs is the id space placeholders draw from (required).
	IDs IDSpace
	// Seed seeds the choice of queries and ids (optional; same seed, same
	// request sequence).
	Seed uint64
	// Concurrency caps requests in flight (optional, default 64). When the
	// cap is reached the schedule keeps running and late requests are sent
	// as soon as a slot frees, their latency still counted from the schedule.
	Concurrency int
	// Limit is the page size sent with each query (optional; 0 = server
	// default).
	Limit int
	// Timeout bounds one request (optional, default 10s). Requests still
	// waiting for a slot Timeout after the schedule ended are not sent and
	// count as errors ("not-sent").
	Timeout time.Duration
	// Progress, when set, is called every ProgressEvery (default 1s) from
	// its own goroutine.
	Progress      func(Progress)
	ProgressEvery time.Duration
	// Client is the HTTP client (optional; default: a client sized for
	// Concurrency whose dialer refuses non-loopback addresses). A client
	// passed here skips that dial-time check; URL is still checked.
	Client *http.Client
}

// MaxRequestsCap is the largest run allowed: 1M requests (about 5.5 hours
// at 50 qps, 33 minutes at 500 qps).
const MaxRequestsCap = 1_000_000

// Validate reports every invalid field.
func (c Config) Validate() error {
	var errs []error
	if err := CheckLoopback(c.URL); err != nil {
		errs = append(errs, fmt.Errorf("url: %w", err))
	}
	if c.MetricsURL != "" {
		if err := CheckLoopback(c.MetricsURL); err != nil {
			errs = append(errs, fmt.Errorf("metrics url: %w", err))
		}
	}
	if c.Token == "" {
		errs = append(errs, errors.New("token: required"))
	}
	if c.Tenant == "" {
		errs = append(errs, errors.New("tenant: required"))
	}
	if !(c.QPS > 0) || math.IsInf(c.QPS, 0) {
		errs = append(errs, errors.New("qps: must be > 0"))
	}
	if c.Duration <= 0 {
		errs = append(errs, errors.New("duration: must be > 0"))
	}
	if c.MaxRequests < 0 || c.MaxRequests > MaxRequestsCap {
		errs = append(errs, fmt.Errorf("max requests: must be between 0 and %d", MaxRequestsCap))
	}
	if len(c.Queries) == 0 {
		errs = append(errs, errors.New("queries: required"))
	}
	if c.Concurrency < 0 || c.Limit < 0 || c.Timeout < 0 || c.ProgressEvery < 0 {
		errs = append(errs, errors.New("concurrency, limit, timeout and progress interval must not be negative"))
	}
	return errors.Join(errs...)
}

func (c *Config) defaults() {
	if c.MaxRequests == 0 {
		c.MaxRequests = MaxRequestsCap
	}
	if c.Concurrency == 0 {
		c.Concurrency = 64
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.ProgressEvery == 0 {
		c.ProgressEvery = time.Second
	}
	c.URL = strings.TrimRight(c.URL, "/")
}

// CheckLoopback accepts only http(s) URLs whose host is localhost or a
// loopback address: load may only be aimed at this machine.
func CheckLoopback(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q: scheme must be http or https", raw)
	}
	host := u.Hostname()
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%q: refusing a non-loopback host (load may only target 127.0.0.0/8, ::1 or localhost)", raw)
}

// loopbackClient re-checks the address actually dialed, so a name that
// resolves elsewhere is refused too.
func loopbackClient(conns int) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, Control: func(_, address string, _ syscall.RawConn) error {
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return err
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("graphload: refusing to connect to non-loopback %s", address)
		}
		return nil
	}}
	return &http.Client{Transport: &http.Transport{
		DialContext:         d.DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
	}}
}

// Progress is a snapshot of a running load.
type Progress struct {
	Elapsed   time.Duration
	Sent      int
	Completed int
	InFlight  int
	OK        int
	Errors    int
	// P99 is the client latency p99 of the responses so far.
	P99 time.Duration
}

// Summary is the result of a run.
type Summary struct {
	URL         string  `json:"url"`
	Tenant      string  `json:"tenant"`
	TargetQPS   float64 `json:"target_qps"`
	DurationS   float64 `json:"duration_s"`
	Concurrency int     `json:"concurrency"`
	Seed        uint64  `json:"seed"`
	Queries     int     `json:"queries"`
	// ElapsedS runs from the first scheduled send to the last response.
	ElapsedS float64 `json:"elapsed_s"`
	// Scheduled requests; Sent of them were sent, NotSent were still
	// waiting for a slot when the run ended (they count as errors).
	Scheduled int `json:"scheduled"`
	Sent      int `json:"sent"`
	NotSent   int `json:"not_sent"`
	// Completed requests got a response or failed (timeout, transport).
	Completed int `json:"completed"`
	// AchievedQPS is completed requests per second of ElapsedS.
	// SentQPS is requests sent per second of the send window (first
	// scheduled send to last send, plus one interval); below the target
	// it means the client, or the concurrency cap, could not keep up.
	AchievedQPS float64 `json:"achieved_qps"`
	SentQPS     float64 `json:"sent_qps"`
	OK          int     `json:"ok"`
	Errors      int     `json:"errors"`
	ErrorRate   float64 `json:"error_rate"`
	// Status counts HTTP status codes, and "timeout", "transport" and
	// "not-sent" for requests without one.
	Status map[string]int `json:"status"`
	// LatencyMS counts from the scheduled send time to the last byte of the
	// response (coordinated-omission free), over every request answered
	// with any status or timed out (transport errors and not-sent
	// requests have no latency).
	LatencyMS LatencyMS `json:"latency_ms"`
	// ServiceMS counts from the actual send; SendLagMS is how late requests
	// were sent (a large lag means the client or the concurrency cap, not
	// only the server, held requests back).
	ServiceMS LatencyMS              `json:"service_ms"`
	SendLagMS LatencyMS              `json:"send_lag_ms"`
	Forms     map[string]FormSummary `json:"forms"`
	Server    ServerSummary          `json:"server"`
	// Client CPU used by this process, and the machine's busy share, over
	// the run (Linux; zero elsewhere).
	ClientCPUPct   float64 `json:"client_cpu_pct"`
	MachineBusyPct float64 `json:"machine_busy_pct,omitempty"`
	// FirstErrors are up to 10 distinct failures, for diagnosis.
	FirstErrors []string `json:"first_errors,omitempty"`
}

// FormSummary is one query form's share of a run.
type FormSummary struct {
	OK        int            `json:"ok"`
	Errors    int            `json:"errors"`
	Status    map[string]int `json:"status"`
	LatencyMS LatencyMS      `json:"latency_ms"`
	// MeanBytes is the mean response body size.
	MeanBytes float64 `json:"mean_bytes"`
}

// ServerSummary is the server's own view: the graph_query_ms histogram
// diffed between the scrapes before and after the run, per op.
type ServerSummary struct {
	Error string              `json:"error,omitempty"`
	Ops   map[string]ServerOp `json:"ops,omitempty"`
	// CPUPct is the server process's CPU (process_cpu_seconds_total) over
	// the run, in % of one core; RSSBytes its resident memory after it.
	CPUPct   float64 `json:"cpu_pct,omitempty"`
	RSSBytes float64 `json:"rss_bytes,omitempty"`
}

// ServerOp is one op's server-side execution time, estimated from
// histogram buckets by linear interpolation (see Buckets.Quantile).
type ServerOp struct {
	Count  float64 `json:"count"`
	MeanMS float64 `json:"mean_ms"`
	P50MS  float64 `json:"p50_ms"`
	P95MS  float64 `json:"p95_ms"`
	P99MS  float64 `json:"p99_ms"`
	// OverMaxBucket counts observations above the largest finite bucket;
	// quantiles that fall there are reported as that bound (a lower bound).
	OverMaxBucket float64 `json:"over_max_bucket,omitempty"`
}

type formStats struct {
	lat    latencyHist
	status map[string]int
	ok     int
	errors int
	bytes  uint64
}

func (f *formStats) add(status string, lat time.Duration, n int64, answered bool) {
	if f.status == nil {
		f.status = map[string]int{}
	}
	f.status[status]++
	if status == "200" {
		f.ok++
	} else {
		f.errors++
	}
	if answered {
		f.lat.record(lat)
		f.bytes += uint64(n)
	}
}

type stats struct {
	mu          sync.Mutex
	all         formStats
	forms       map[string]*formStats
	service     latencyHist
	lag         latencyHist
	sent        int
	completed   int
	lastSent    time.Time
	lastDone    time.Time
	firstErrors []string
}

func (s *stats) addError(msg string) {
	if len(s.firstErrors) < 10 && !slices.Contains(s.firstErrors, msg) {
		s.firstErrors = append(s.firstErrors, msg)
	}
}

type queryBody struct {
	Tenant string         `json:"tenant"`
	Query  string         `json:"query"`
	Vars   map[string]any `json:"vars,omitempty"`
	Limit  int            `json:"limit,omitempty"`
}

// Run runs the load until Duration or MaxRequests is reached or ctx is
// canceled (then requests in flight still finish, within Timeout), and
// summarizes it. It fails only on an invalid config; errors of individual
// requests and of the metrics scrape are part of the summary.
func Run(ctx context.Context, cfg Config) (*Summary, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("graphload: %w", err)
	}
	cfg.defaults()
	client := cfg.Client
	if client == nil {
		client = loopbackClient(cfg.Concurrency)
	}
	var before map[string]*Buckets
	var beforeCPU float64
	var scrapeErr error
	if cfg.MetricsURL != "" {
		before, beforeCPU, _, scrapeErr = scrape(ctx, client, cfg.MetricsURL)
	}
	cpu0 := processCPU()
	busy0, total0 := machineBusy()

	st := &stats{forms: map[string]*formStats{}}
	for _, q := range cfg.Queries {
		st.forms[q.Form] = &formStats{status: map[string]int{}}
	}
	total := min(cfg.MaxRequests, int(math.Ceil(cfg.QPS*cfg.Duration.Seconds())))
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5851f42d4c957f2d))
	sem := make(chan struct{}, cfg.Concurrency)
	reqCtx := context.WithoutCancel(ctx)
	var wg sync.WaitGroup
	start := time.Now()
	// Requests still waiting for a slot this long after the schedule ended
	// are abandoned and count as not sent.
	giveUp := time.NewTimer(cfg.Duration + cfg.Timeout)
	defer giveUp.Stop()

	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		if cfg.Progress == nil {
			return
		}
		t := time.NewTicker(cfg.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-t.C:
				cfg.Progress(st.progress(start))
			}
		}
	}()

	scheduled, notSent := 0, 0
	timer := time.NewTimer(0)
	<-timer.C
schedule:
	for i := 0; i < total && ctx.Err() == nil; i++ {
		at := start.Add(time.Duration(float64(i) * float64(time.Second) / cfg.QPS))
		if d := time.Until(at); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				timer.Stop()
				break schedule
			case <-timer.C:
			}
		}
		scheduled++
		q := cfg.Queries[rng.IntN(len(cfg.Queries))]
		vars := cfg.IDs.Vars(rng, q.Placeholders)
		select {
		case sem <- struct{}{}:
		default:
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				scheduled--
				break schedule
			case <-giveUp.C:
				notSent = total - i
				scheduled = total
				break schedule
			}
		}
		st.mu.Lock()
		st.sent++
		st.lastSent = time.Now()
		st.mu.Unlock()
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			st.do(reqCtx, client, &cfg, q, vars, at)
		}()
	}
	wg.Wait()
	close(stopProgress)
	<-progressDone
	if notSent > 0 {
		st.mu.Lock()
		for range notSent {
			st.all.add("not-sent", 0, 0, false)
		}
		st.addError(fmt.Sprintf("not-sent: %d requests still waited for one of %d slots %s after the schedule ended", notSent, cfg.Concurrency, cfg.Timeout))
		st.mu.Unlock()
	}

	sum := st.summary(cfg, start, scheduled, notSent)
	if cpu := processCPU() - cpu0; cpu > 0 && sum.ElapsedS > 0 {
		sum.ClientCPUPct = 100 * cpu.Seconds() / sum.ElapsedS
	}
	if busy1, total1 := machineBusy(); total1 > total0 {
		sum.MachineBusyPct = 100 * float64(busy1-busy0) / float64(total1-total0)
	}
	if cfg.MetricsURL != "" {
		if scrapeErr != nil {
			sum.Server.Error = "scrape before the run: " + scrapeErr.Error()
		} else if after, afterCPU, rss, err := scrape(reqCtx, client, cfg.MetricsURL); err != nil {
			sum.Server.Error = "scrape after the run: " + err.Error()
		} else {
			sum.Server.Ops = serverOps(Diff(before, after))
			if sum.ElapsedS > 0 && afterCPU >= beforeCPU {
				sum.Server.CPUPct = 100 * (afterCPU - beforeCPU) / sum.ElapsedS
			}
			sum.Server.RSSBytes = rss
		}
	}
	return sum, nil
}

// do sends one query and records its outcome.
func (st *stats) do(ctx context.Context, client *http.Client, cfg *Config, q Query, vars map[string]any, at time.Time) {
	body, _ := json.Marshal(queryBody{Tenant: cfg.Tenant, Query: q.Text, Vars: vars, Limit: cfg.Limit})
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	sentAt := time.Now()
	status, n, detail := send(ctx, client, cfg.URL+"/v1/graph/query", cfg.Token, body)
	done := time.Now()
	// A timeout's latency is a lower bound and is kept; a transport error
	// (refused, reset) has no meaningful latency.
	answered := status != "transport"

	st.mu.Lock()
	defer st.mu.Unlock()
	st.completed++
	st.lastDone = done
	st.lag.record(sentAt.Sub(at))
	f := st.forms[q.Form]
	f.add(status, done.Sub(at), n, answered)
	st.all.add(status, done.Sub(at), n, answered)
	if answered {
		st.service.record(done.Sub(sentAt))
	}
	if status != "200" {
		st.addError(fmt.Sprintf("%s %s: %s", status, q.Form, detail))
	}
}

// send posts one query and reads the whole response. status is the HTTP
// status code, or "timeout" / "transport"; detail describes a failure.
func send(ctx context.Context, client *http.Client, url, token string, body []byte) (status string, n int64, detail string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return "transport", 0, err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err == nil {
		defer resp.Body.Close()
		status = strconv.Itoa(resp.StatusCode)
		if resp.StatusCode == http.StatusOK {
			n, err = io.Copy(io.Discard, resp.Body)
		} else {
			var b []byte
			b, err = io.ReadAll(io.LimitReader(resp.Body, 4<<10))
			n, detail = int64(len(b)), problemDetail(b)
			m, _ := io.Copy(io.Discard, resp.Body)
			n += m
		}
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return "timeout", n, err.Error()
		}
		return "transport", n, err.Error()
	}
	return status, n, detail
}

// problemDetail shortens a problem+json body to "type: detail" without the
// request's random ids, so that repeated failures collapse.
func problemDetail(b []byte) string {
	var p struct{ Type, Title, Detail string }
	if json.Unmarshal(b, &p) != nil || (p.Type == "" && p.Detail == "") {
		s := strings.TrimSpace(string(b))
		if len(s) > 200 {
			s = s[:200]
		}
		return s
	}
	d := p.Detail
	if i := strings.Index(d, " (at "); i > 0 { // limit errors carry the node; keep the kind
		d = d[:i]
	}
	if len(d) > 200 {
		d = d[:200]
	}
	return p.Type + ": " + d
}

func (st *stats) progress(start time.Time) Progress {
	st.mu.Lock()
	defer st.mu.Unlock()
	return Progress{Elapsed: time.Since(start), Sent: st.sent, Completed: st.completed,
		InFlight: st.sent - st.completed, OK: st.all.ok, Errors: st.all.errors, P99: st.all.lat.quantile(.99)}
}

func (st *stats) summary(cfg Config, start time.Time, scheduled, notSent int) *Summary {
	st.mu.Lock()
	defer st.mu.Unlock()
	s := &Summary{URL: cfg.URL, Tenant: cfg.Tenant, TargetQPS: cfg.QPS, DurationS: cfg.Duration.Seconds(),
		Concurrency: cfg.Concurrency, Seed: cfg.Seed, Queries: len(cfg.Queries),
		Scheduled: scheduled, Sent: st.sent, NotSent: notSent, Completed: st.completed, OK: st.all.ok, Errors: st.all.errors,
		Status: st.all.status, LatencyMS: st.all.lat.summary(), ServiceMS: st.service.summary(),
		SendLagMS: st.lag.summary(), Forms: map[string]FormSummary{}, FirstErrors: st.firstErrors}
	if s.Status == nil {
		s.Status = map[string]int{}
	}
	end := st.lastDone
	if end.IsZero() {
		end = time.Now()
	}
	s.ElapsedS = end.Sub(start).Seconds()
	if s.ElapsedS > 0 {
		s.AchievedQPS = float64(st.completed) / s.ElapsedS
	}
	if st.sent > 0 {
		s.SentQPS = float64(st.sent) / (st.lastSent.Sub(start).Seconds() + 1/cfg.QPS)
	}
	if n := s.OK + s.Errors; n > 0 {
		s.ErrorRate = float64(s.Errors) / float64(n)
	}
	for form, f := range st.forms {
		fs := FormSummary{OK: f.ok, Errors: f.errors, Status: f.status, LatencyMS: f.lat.summary()}
		if f.lat.n > 0 {
			fs.MeanBytes = float64(f.bytes) / float64(f.lat.n)
		}
		s.Forms[form] = fs
	}
	return s
}

func serverOps(diff map[string]*Buckets) map[string]ServerOp {
	ops := map[string]ServerOp{}
	for op, b := range diff {
		o := ServerOp{Count: b.Count, P50MS: finite(b.Quantile(.50)), P95MS: finite(b.Quantile(.95)), P99MS: finite(b.Quantile(.99))}
		if b.Count > 0 {
			o.MeanMS = b.Sum / b.Count
		}
		var maxFinite float64
		for le := range b.Le {
			if !math.IsInf(le, 1) {
				maxFinite = max(maxFinite, le)
			}
		}
		o.OverMaxBucket = b.Count - b.Le[maxFinite]
		ops[op] = o
	}
	return ops
}

// finite maps NaN (no buckets) to 0: JSON has no NaN.
func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}

// scrape reads graph_query_ms by op, process_cpu_seconds_total and
// process_resident_memory_bytes from a /metrics endpoint.
func scrape(ctx context.Context, client *http.Client, metricsURL string) (hist map[string]*Buckets, cpu, rss float64, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return nil, 0, 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, 0, fmt.Errorf("GET %s: %s", metricsURL, resp.Status)
	}
	text, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, 0, 0, err
	}
	hist, err = ParseHistogram(bytes.NewReader(text), "graph_query_ms", "op")
	if err != nil {
		return nil, 0, 0, err
	}
	for line := range strings.SplitSeq(string(text), "\n") {
		if v, ok := strings.CutPrefix(line, "process_cpu_seconds_total "); ok {
			cpu, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
		if v, ok := strings.CutPrefix(line, "process_resident_memory_bytes "); ok {
			rss, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return hist, cpu, rss, nil
}

// processCPU is the user+system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineBusy reads the aggregate CPU line of /proc/stat: busy and total
// jiffies (zero when unavailable).
func machineBusy() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	for i, s := range f[1:] {
		v, _ := strconv.ParseUint(s, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}
