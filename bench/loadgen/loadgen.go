// Package loadgen drives the CompanyOS command API (POST /v1/commands) with
// HTTP load and measures what a caller sees: throughput, status codes and
// end-to-end latency.
//
// It has two modes. Open loop (Rate > 0) schedules requests at a constant
// arrival rate on a clock, independent of responses, and measures each
// latency from the request's scheduled start, so time spent queued behind a
// slow server (or a saturated client) is counted instead of silently omitted
// ("coordinated omission"). Closed loop (Rate == 0) runs Concurrency workers
// that each send their next request when the previous one is answered, to
// find the saturation throughput.
//
// It talks to the product only over HTTP and only on loopback: it refuses any
// other host, and its dialer re-checks the address it actually connects to.
package loadgen

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Config configures one load run.
type Config struct {
	// URL is the API base URL (required); requests go to URL + /v1/commands.
	// Its host must be loopback: localhost, 127.0.0.0/8 or ::1.
	URL string
	// Token is the bearer token (required).
	Token string
	// Tenants is how many tenants the load is spread over, round robin
	// (optional, default 8). They are named TenantPrefix0..TenantPrefix<N-1>.
	Tenants int
	// TenantPrefix (optional, default "bench-").
	TenantPrefix string
	// Rate is the offered load in commands/s (open loop). 0 selects closed
	// loop with Concurrency workers.
	Rate float64
	// Concurrency is the number of closed-loop workers (optional, default 64).
	Concurrency int
	// MaxInFlight caps outstanding open-loop requests (optional, default
	// 10000). When reached, the scheduler waits; the wait is part of the
	// measured latency because latency counts from the scheduled start.
	MaxInFlight int
	// Duration is the measured window (optional, default 30s).
	Duration time.Duration
	// Warmup runs before the measured window; its requests are sent but not
	// recorded (optional, default 0: Validate rejects negative values).
	Warmup time.Duration
	// Mix is MixCreate or MixMixed (optional, default MixCreate).
	Mix string
	// RunID prefixes entity ids so runs don't collide (optional, default
	// random). It must match [A-Za-z0-9._-]{1,64}.
	RunID string
	// MaxRequests is a hard cap on requests sent, warmup included (optional,
	// default 2,000,000).
	MaxRequests int64
	// Timeout bounds one request (optional, default 15s: above the server's
	// default 10s command timeout, so its 504 is seen rather than ours).
	Timeout time.Duration
	// ServerPID, when set (Linux), is the server process whose CPU time is
	// sampled over the measured window, next to this process's own.
	ServerPID int
	// Progress, when set, is called about once a second during the run.
	Progress func(Progress)
	// Transport overrides the tuned default transport (optional, for tests).
	Transport http.RoundTripper
}

var (
	runIDRe        = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	tenantPrefixRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,56}$`)
)

// Defaults fills unset optional fields.
func (c *Config) Defaults() {
	if c.Tenants == 0 {
		c.Tenants = 8
	}
	if c.TenantPrefix == "" {
		c.TenantPrefix = "bench-"
	}
	if c.Concurrency == 0 {
		c.Concurrency = 64
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 10000
	}
	if c.Duration == 0 {
		c.Duration = 30 * time.Second
	}
	if c.Mix == "" {
		c.Mix = MixCreate
	}
	if c.RunID == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		c.RunID = "r" + hex.EncodeToString(b[:])
	}
	if c.MaxRequests == 0 {
		c.MaxRequests = 2_000_000
	}
	if c.Timeout == 0 {
		c.Timeout = 15 * time.Second
	}
}

// Validate reports every invalid field.
func (c Config) Validate() error {
	var errs []error
	if _, err := CheckLoopbackURL(c.URL); err != nil {
		errs = append(errs, err)
	}
	if strings.TrimSpace(c.Token) == "" {
		errs = append(errs, errors.New("token: required"))
	}
	if c.Tenants < 1 || c.Tenants > 10000 {
		errs = append(errs, fmt.Errorf("tenants: %d, want 1..10000", c.Tenants))
	}
	if !tenantPrefixRe.MatchString(c.TenantPrefix) {
		errs = append(errs, fmt.Errorf("tenant prefix %q: want lowercase letters, digits and dashes", c.TenantPrefix))
	}
	if c.Rate < 0 {
		errs = append(errs, fmt.Errorf("rate: %v, want >= 0 (0 = closed loop)", c.Rate))
	}
	if c.Concurrency < 1 || c.Concurrency > 100000 {
		errs = append(errs, fmt.Errorf("concurrency: %d, want 1..100000", c.Concurrency))
	}
	if c.MaxInFlight < 1 {
		errs = append(errs, fmt.Errorf("max in-flight: %d, want >= 1", c.MaxInFlight))
	}
	if c.Duration <= 0 {
		errs = append(errs, fmt.Errorf("duration: %v, want > 0", c.Duration))
	}
	if c.Warmup < 0 {
		errs = append(errs, fmt.Errorf("warmup: %v, want >= 0", c.Warmup))
	}
	if c.Mix != MixCreate && c.Mix != MixMixed {
		errs = append(errs, fmt.Errorf("mix: %q, want one of %s", c.Mix, strings.Join(Mixes, ", ")))
	}
	if !runIDRe.MatchString(c.RunID) {
		errs = append(errs, fmt.Errorf("run id %q: want %s", c.RunID, runIDRe))
	}
	if c.MaxRequests < 1 {
		errs = append(errs, fmt.Errorf("max requests: %d, want >= 1", c.MaxRequests))
	}
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout: %v, want > 0", c.Timeout))
	}
	return errors.Join(errs...)
}

// ErrNotLoopback is returned for a target that is not on this machine.
var ErrNotLoopback = errors.New("only loopback targets are allowed (localhost, 127.0.0.0/8, ::1)")

// CheckLoopbackURL parses raw and refuses it unless it is an http(s) URL on
// a loopback host.
func CheckLoopbackURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("url %q: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("url %q: scheme must be http or https", raw)
	}
	host := u.Hostname()
	if host == "" {
		return nil, fmt.Errorf("url %q: no host", raw)
	}
	if strings.EqualFold(host, "localhost") {
		return u, nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return u, nil
	}
	return nil, fmt.Errorf("url %q: refusing host %q: %w", raw, host, ErrNotLoopback)
}

// loopbackDial dials like net.Dialer but closes any connection whose peer is
// not a loopback address (e.g. "localhost" resolving elsewhere).
func loopbackDial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if ta, ok := conn.RemoteAddr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
		_ = conn.Close()
		return nil, fmt.Errorf("dial %s: peer %v: %w", addr, conn.RemoteAddr(), ErrNotLoopback)
	}
	return conn, nil
}

// NewTransport is the tuned transport Run uses: keep-alive connections, up
// to conns of them idle per host, no compression, loopback only.
func NewTransport(conns int, responseTimeout time.Duration) *http.Transport {
	return &http.Transport{
		DialContext:           loopbackDial,
		MaxIdleConns:          conns,
		MaxIdleConnsPerHost:   conns,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: responseTimeout,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
	}
}

// Progress is a once-a-second snapshot during the run. Result.Timeline
// keeps them all.
type Progress struct {
	Elapsed  time.Duration `json:"-"`        // since the start, warmup included
	Second   float64       `json:"t_s"`      // Elapsed in seconds
	Warmup   bool          `json:"warmup"`   // still in the warmup
	Sent     int64         `json:"sent"`     // requests sent so far (this phase)
	OK       int64         `json:"ok"`       // 2xx answers so far (this phase)
	Errors   int64         `json:"errors"`   // non-2xx and transport errors so far (this phase)
	InFlight int64         `json:"inflight"` // outstanding requests now
	SentRate float64       `json:"sent_per_s"`
	OKRate   float64       `json:"ok_per_s"`
	P99      time.Duration `json:"-"` // p99 so far (this phase)
	// IntervalP99 and IntervalMax cover answers received in the last
	// interval only, to show stalls that the running p99 smooths over.
	IntervalP99 time.Duration `json:"-"`
	IntervalMax time.Duration `json:"-"`
	P99MS       float64       `json:"p99_ms"` // IntervalP99 in ms
	MaxMS       float64       `json:"max_ms"` // IntervalMax in ms
	// CPU over the last interval, in % of one core (0 when unknown).
	LoadGenCPU  float64 `json:"load_generator_cpu_pct"`
	ServerCPU   float64 `json:"server_cpu_pct,omitempty"`
	MachineBusy float64 `json:"machine_busy_pct"`
}

// Latency is a latency summary in milliseconds.
type Latency struct {
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P95  float64 `json:"p95_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p99_9_ms"`
	Max  float64 `json:"max_ms"`
	Mean float64 `json:"mean_ms"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func summarize(h *Histogram) Latency {
	return Latency{P50: ms(h.Quantile(.50)), P90: ms(h.Quantile(.90)), P95: ms(h.Quantile(.95)),
		P99: ms(h.Quantile(.99)), P999: ms(h.Quantile(.999)), Max: ms(h.Max()), Mean: ms(h.Mean())}
}

// TypeResult is the outcome of one command type.
type TypeResult struct {
	Sent    int64   `json:"sent"`
	OK      int64   `json:"ok"`
	Latency Latency `json:"latency"`
}

// CPU is CPU time used during the measured window, in percent of one core
// (200% = two cores busy).
type CPU struct {
	LoadGenerator float64 `json:"load_generator_pct"`
	Server        float64 `json:"server_pct,omitempty"`
	ServerPID     int     `json:"server_pid,omitempty"`
	ServerRSSMiB  float64 `json:"server_rss_mib,omitempty"`
	// Machine is the whole machine's busy CPU (all processes); Machine minus
	// the two above is what other processes took from the benchmark.
	Machine float64 `json:"machine_busy_pct,omitempty"`
	Cores   int     `json:"cores"`
}

// Result is the outcome of a run; only requests scheduled (open loop) or
// started (closed loop) inside the measured window count.
type Result struct {
	Mode        string    `json:"mode"` // "open-loop" or "closed-loop"
	URL         string    `json:"url"`
	Started     time.Time `json:"started"`
	Tenants     int       `json:"tenants"`
	Mix         string    `json:"mix"`
	RunID       string    `json:"run_id"`
	Concurrency int       `json:"concurrency,omitempty"` // closed loop
	// OfferedRate is the configured arrival rate (open loop); 0 in closed loop.
	OfferedRate float64 `json:"offered_rate"`
	Warmup      float64 `json:"warmup_s"`
	// Window is the measured window in seconds (shorter than configured when
	// the run was interrupted or hit MaxRequests).
	Window float64 `json:"window_s"`
	Sent   int64   `json:"sent"`
	OK     int64   `json:"ok"`
	Errors int64   `json:"errors"`
	// SentRate is sent/window: the load actually offered.
	SentRate float64 `json:"sent_per_s"`
	// Throughput is ok/window: the achieved throughput.
	Throughput float64 `json:"ok_per_s"`
	ErrorRate  float64 `json:"error_rate"`
	// Statuses counts answers by HTTP status ("201") or transport error
	// ("error:timeout", "error:refused", ...).
	Statuses map[string]int64 `json:"statuses"`
	// ErrorSamples holds the first response body (truncated) seen for each
	// non-2xx status, to tell e.g. a policy deny from a rate limit.
	ErrorSamples map[string]string `json:"error_samples,omitempty"`
	// Latency covers every measured request, failed ones included.
	Latency   Latency               `json:"latency"`
	OKLatency Latency               `json:"ok_latency"`
	ByType    map[string]TypeResult `json:"by_type"`
	// MaxInFlight is the most requests outstanding at once.
	MaxInFlight int64 `json:"max_inflight"`
	// MaxSchedulerLagMS is, in open loop, the largest delay between a
	// request's scheduled and actual send: large values mean the load
	// generator (not the server) was the bottleneck.
	MaxSchedulerLagMS float64 `json:"max_scheduler_lag_ms,omitempty"`
	// Unfinished counts measured requests still outstanding when the run
	// gave up waiting for them (counted as errors).
	Unfinished  int64 `json:"unfinished,omitempty"`
	Interrupted bool  `json:"interrupted,omitempty"`
	HitMaxReqs  bool  `json:"hit_max_requests,omitempty"`
	CPU         *CPU  `json:"cpu,omitempty"`
	// Timeline has one snapshot per second, warmup included, to locate
	// stalls and correlate them with CPU use.
	Timeline []Progress `json:"timeline,omitempty"`
}

// phase accumulates one phase's (warmup or measured) outcomes.
type phase struct {
	sent, ok, errs atomic.Int64
	all, okOnly    Histogram
	interval       atomic.Pointer[Histogram] // answers since the last progress line
	byType         map[string]*typePhase
	statusMu       sync.Mutex
	statuses       map[string]int64
	samples        map[string]string
}

type typePhase struct {
	sent, ok atomic.Int64
	hist     Histogram
}

func newPhase() *phase {
	p := &phase{byType: map[string]*typePhase{}, statuses: map[string]int64{}, samples: map[string]string{}}
	p.interval.Store(new(Histogram))
	for _, t := range []string{typeCreate, typeUpdate, typeLink} {
		p.byType[t] = &typePhase{}
	}
	return p
}

func (p *phase) record(typ, status string, ok bool, lat time.Duration, sample func() string) {
	tp := p.byType[typ]
	if ok {
		p.ok.Add(1)
		p.okOnly.Record(lat)
		tp.ok.Add(1)
	} else {
		p.errs.Add(1)
	}
	p.all.Record(lat)
	p.interval.Load().Record(lat)
	tp.hist.Record(lat)
	p.statusMu.Lock()
	p.statuses[status]++
	if _, seen := p.samples[status]; !seen && !ok {
		p.samples[status] = sample()
	}
	p.statusMu.Unlock()
}

// runner is one run in progress.
type runner struct {
	cfg      Config
	endpoint string
	client   *http.Client
	work     *workload

	start, measureAt, end time.Time
	warm, meas            *phase
	seq                   atomic.Uint64 // next request number
	inflight, maxInflight atomic.Int64
	maxLag                atomic.Int64 // ns
	hitMax                atomic.Bool
	pending               sync.WaitGroup // measured requests outstanding
	timeline              []Progress     // written by progress only
}

// Run runs the load and returns what was measured. Cancelling ctx stops it
// early; the result then covers the part that ran.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	base, _ := CheckLoopbackURL(cfg.URL)
	r := &runner{cfg: cfg, endpoint: strings.TrimSuffix(base.String(), "/") + "/v1/commands",
		work: newWorkload(cfg.RunID, cfg.Mix, cfg.TenantPrefix, cfg.Tenants), warm: newPhase(), meas: newPhase()}
	tr := cfg.Transport
	if tr == nil {
		conns := cfg.Concurrency
		if cfg.Rate > 0 {
			conns = cfg.MaxInFlight
		}
		t := NewTransport(conns, cfg.Timeout)
		defer t.CloseIdleConnections()
		tr = t
	}
	r.client = &http.Client{Transport: tr, Timeout: cfg.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	r.start = time.Now()
	r.measureAt = r.start.Add(cfg.Warmup)
	r.end = r.measureAt.Add(cfg.Duration)

	progressDone := make(chan struct{})
	stopProgress := make(chan struct{})
	go func() { defer close(progressDone); r.progress(stopProgress) }()

	var cpuStart cpuSample
	cpuTaken, loopDone := make(chan struct{}), make(chan struct{})
	go func() { // sample CPU when the measured window opens
		defer close(cpuTaken)
		select {
		case <-time.After(time.Until(r.measureAt)):
		case <-loopDone:
		}
		cpuStart = takeCPU(cfg.ServerPID)
	}()

	if cfg.Rate > 0 {
		r.openLoop(ctx)
	} else {
		r.closedLoop(ctx)
	}
	stoppedAt := time.Now()
	close(loopDone)
	<-cpuTaken
	cpuEnd := takeCPU(cfg.ServerPID)
	// Wait for measured requests still in flight; each is bounded by the
	// client timeout, plus slack for the transport to notice.
	waited := make(chan struct{})
	go func() { r.pending.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(cfg.Timeout + 2*time.Second):
	}
	close(stopProgress)
	<-progressDone

	windowEnd := stoppedAt
	if windowEnd.After(r.end) {
		windowEnd = r.end
	}
	window := windowEnd.Sub(r.measureAt)
	if window < 0 {
		window = 0
	}
	res := r.result(window)
	res.Interrupted = ctx.Err() != nil
	res.CPU = cpuUse(cpuStart, cpuEnd)
	res.Timeline = r.timeline
	return res, nil
}

// openLoop sends requests at cfg.Rate on a clock until the end of the run.
func (r *runner) openLoop(ctx context.Context) {
	interval := float64(time.Second) / r.cfg.Rate
	tick := time.Duration(interval)
	if tick < time.Millisecond {
		tick = time.Millisecond // dispatch every due request on each tick
	}
	if tick > 10*time.Millisecond {
		tick = 10 * time.Millisecond
	}
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	sem := make(chan struct{}, r.cfg.MaxInFlight)
	var i int64
	for {
		now := time.Now()
		for {
			due := r.start.Add(time.Duration(float64(i) * interval))
			if due.After(now) {
				break
			}
			if !due.Before(r.end) || ctx.Err() != nil {
				return
			}
			if i >= r.cfg.MaxRequests {
				r.hitMax.Store(true)
				return
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			measured := !due.Before(r.measureAt)
			if measured {
				r.pending.Add(1)
			}
			go func(n uint64, due time.Time) {
				defer func() { <-sem }()
				storeMax(&r.maxLag, int64(time.Since(due)))
				r.do(ctx, n, due, measured)
			}(uint64(i), due)
			i++
			now = time.Now()
		}
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return
		}
	}
}

// closedLoop runs Concurrency workers back to back until the end of the run.
func (r *runner) closedLoop(ctx context.Context) {
	var wg sync.WaitGroup
	for range r.cfg.Concurrency {
		wg.Go(func() {
			for ctx.Err() == nil {
				start := time.Now()
				if !start.Before(r.end) {
					return
				}
				n := r.seq.Add(1) - 1
				if int64(n) >= r.cfg.MaxRequests {
					r.hitMax.Store(true)
					return
				}
				measured := !start.Before(r.measureAt)
				if measured {
					r.pending.Add(1)
				}
				r.do(ctx, n, start, measured)
			}
		})
	}
	wg.Wait()
}

// do sends request n and records its latency from start (its scheduled time
// in open loop). Requests are not cancelled by the end of the window, only by
// ctx (interrupt) or the client timeout.
func (r *runner) do(ctx context.Context, n uint64, start time.Time, measured bool) {
	if measured {
		defer r.pending.Done()
	}
	storeMax(&r.maxInflight, r.inflight.Add(1))
	defer r.inflight.Add(-1)
	req := r.work.next(n)
	ph := r.warm
	if measured {
		ph = r.meas
	}
	ph.sent.Add(1)
	ph.byType[req.typ].sent.Add(1)

	status, ok, detail := r.send(ctx, req.body)
	lat := time.Since(start)
	if ok && req.ok != nil {
		req.ok()
	}
	ph.record(req.typ, status, ok, lat, func() string {
		return req.typ + " " + string(req.body) + " -> " + detail
	})
}

// maxSample bounds the error body kept per status.
const maxSample = 600

// send posts one command; it returns the status ("201" or "error:<class>"),
// whether it was a 2xx and, when not, the error or the start of the body.
func (r *runner) send(ctx context.Context, body []byte) (status string, ok bool, detail string) {
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, r.endpoint, bytes.NewReader(body))
	if err != nil {
		return "error:request", false, err.Error()
	}
	hreq.Header.Set("Authorization", "Bearer "+r.cfg.Token)
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := r.client.Do(hreq)
	if err != nil {
		return "error:" + classify(err), false, err.Error()
	}
	defer resp.Body.Close()
	ok = resp.StatusCode >= 200 && resp.StatusCode < 300
	if !ok {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxSample))
		detail = strings.TrimSpace(string(b))
	}
	// Drain the body so the connection is reused.
	_, _ = io.Copy(io.Discard, resp.Body)
	return strconv.Itoa(resp.StatusCode), ok, detail
}

func storeMax(a *atomic.Int64, v int64) {
	for {
		cur := a.Load()
		if v <= cur || a.CompareAndSwap(cur, v) {
			return
		}
	}
}

func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, ErrNotLoopback):
		return "not-loopback"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EMFILE):
		return "no-sockets"
	}
	return "other"
}

func (r *runner) progress(stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastSent, lastOK int64
	lastAt, lastWarm := time.Now(), true
	lastCPU := takeCPU(r.cfg.ServerPID)
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			warm := now.Before(r.measureAt)
			ph := r.meas
			if warm {
				ph = r.warm
			}
			if warm != lastWarm { // phase switch: rates restart from zero
				lastSent, lastOK, lastWarm = 0, 0, warm
			}
			sent, ok := ph.sent.Load(), ph.ok.Load()
			dt := now.Sub(lastAt).Seconds()
			iv := ph.interval.Swap(new(Histogram))
			p := Progress{Elapsed: now.Sub(r.start), Second: now.Sub(r.start).Round(time.Millisecond).Seconds(), Warmup: warm,
				Sent: sent, OK: ok, Errors: ph.errs.Load(), InFlight: r.inflight.Load(),
				SentRate: float64(sent-lastSent) / dt, OKRate: float64(ok-lastOK) / dt,
				P99: ph.all.Quantile(.99), IntervalP99: iv.Quantile(.99), IntervalMax: iv.Max()}
			p.P99MS, p.MaxMS = ms(p.IntervalP99), ms(p.IntervalMax)
			cpu := takeCPU(r.cfg.ServerPID)
			if c := cpuUse(lastCPU, cpu); c != nil {
				p.LoadGenCPU, p.ServerCPU, p.MachineBusy = c.LoadGenerator, c.Server, c.Machine
			}
			lastCPU = cpu
			r.timeline = append(r.timeline, p)
			if r.cfg.Progress != nil {
				r.cfg.Progress(p)
			}
			lastSent, lastOK, lastAt = sent, ok, now
		}
	}
}

func (r *runner) result(window time.Duration) *Result {
	m := r.meas
	res := &Result{Mode: "closed-loop", URL: r.endpoint, Started: r.start, Tenants: r.cfg.Tenants, Mix: r.cfg.Mix,
		RunID: r.cfg.RunID, Warmup: r.cfg.Warmup.Seconds(), Window: window.Seconds(),
		Sent: m.sent.Load(), OK: m.ok.Load(), Errors: m.errs.Load(),
		Latency: summarize(&m.all), OKLatency: summarize(&m.okOnly),
		ByType: map[string]TypeResult{}, MaxInFlight: r.maxInflight.Load(), HitMaxReqs: r.hitMax.Load()}
	if r.cfg.Rate > 0 {
		res.Mode, res.OfferedRate = "open-loop", r.cfg.Rate
		res.MaxSchedulerLagMS = ms(time.Duration(r.maxLag.Load()))
	} else {
		res.Concurrency = r.cfg.Concurrency
	}
	m.statusMu.Lock()
	res.Statuses = maps.Clone(m.statuses)
	if len(m.samples) > 0 {
		res.ErrorSamples = maps.Clone(m.samples)
	}
	m.statusMu.Unlock()
	if done := res.OK + res.Errors; done < res.Sent {
		res.Unfinished = res.Sent - done
		res.Errors += res.Unfinished
		res.Statuses["unfinished"] += res.Unfinished
	}
	for t, tp := range m.byType {
		if n := tp.sent.Load(); n > 0 {
			res.ByType[t] = TypeResult{Sent: n, OK: tp.ok.Load(), Latency: summarize(&tp.hist)}
		}
	}
	if s := window.Seconds(); s > 0 {
		res.SentRate = float64(res.Sent) / s
		res.Throughput = float64(res.OK) / s
	}
	if res.Sent > 0 {
		res.ErrorRate = float64(res.Errors) / float64(res.Sent)
	}
	return res
}

// cpuSample is cumulative CPU time of this process and the server.
type cpuSample struct {
	at                    time.Time
	self, srv             time.Duration
	busy                  time.Duration // whole machine, from /proc/stat
	selfOK, srvOK, busyOK bool
	srvPID                int
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// mainstream Linux build.
const clockTicks = 100

// procCPU reads utime+stime of pid from /proc (Linux only).
func procCPU(pid string) (time.Duration, bool) {
	raw, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, false
	}
	// Fields after the parenthesised command name; utime and stime are the
	// 14th and 15th fields overall, i.e. the 12th and 13th after ")".
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(ut+st) * time.Second / clockTicks, true
}

func takeCPU(serverPID int) cpuSample {
	s := cpuSample{at: time.Now(), srvPID: serverPID}
	s.self, s.selfOK = procCPU("self")
	s.busy, s.busyOK = machineBusy()
	if serverPID > 0 {
		s.srv, s.srvOK = procCPU(strconv.Itoa(serverPID))
	}
	return s
}

// machineBusy is the CPU time all cores spent neither idle nor in iowait,
// from the first line of /proc/stat.
func machineBusy() (time.Duration, bool) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, false
	}
	var busy uint64
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, false
		}
		// user nice system idle iowait irq softirq steal guest guest_nice;
		// guest time is already included in user.
		if i == 3 || i == 4 || i >= 8 {
			continue
		}
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTicks, true
}

// rssMiB reads VmRSS of pid from /proc.
func rssMiB(pid int) float64 {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseFloat(f[0], 64)
				return kb / 1024
			}
		}
	}
	return 0
}

func cpuUse(a, b cpuSample) *CPU {
	wall := b.at.Sub(a.at)
	if !a.selfOK || !b.selfOK || wall <= 0 {
		return nil
	}
	pct := func(d time.Duration) float64 { return math.Round(1000*float64(d)/float64(wall)) / 10 }
	c := &CPU{LoadGenerator: pct(b.self - a.self), Cores: runtime.NumCPU()}
	if a.busyOK && b.busyOK {
		c.Machine = pct(b.busy - a.busy)
	}
	if a.srvOK && b.srvOK {
		c.Server = pct(b.srv - a.srv)
		c.ServerPID = a.srvPID
		c.ServerRSSMiB = math.Round(rssMiB(a.srvPID))
	}
	return c
}
