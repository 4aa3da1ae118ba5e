package main

// End-to-end mode (--e2e): HTTP → Kafka → cogs projector → ClickHouse
// against a running `companyos dev` (or serve with the api and cogs roles).
//
// What it checks and measures:
//
//   - Zero loss. Every event of the run carries the tag team=ml-<run> and
//     the run's id prefix. After the load, meterload waits until the
//     projector's positions (cogs_positions) reach the end offsets that
//     metering.events.v1 had once every request was answered, then counts
//     the run's distinct events in metering_events (grouped by the event key
//     (tenant, hour, source, id), as readers must: ReplacingMergeTree
//     collapses replays only when it merges) and in usage_hourly_current
//     (the view every FinOps query reads), with exact sums of quantity,
//     against the events the API accepted with a 202 and their exact sum.
//   - DLQ. Records produced to companyos.dlq.v1 while the run lasted (end
//     offsets after minus before); with valid events it must be 0.
//   - Freshness. Every --sample-every'th event is a probe: same shape, but
//     source //meterload/<run>/probe, so that polling for it reads a few
//     granules of metering_events (the source is in its ORDER BY) instead of
//     the whole run. A poller asks ClickHouse every --poll-interval which
//     pending probes are visible; a probe's freshness is the time from the
//     202 of its request to the end of the first poll that saw it (an upper
//     bound: it includes up to one poll interval and the poll's own time).
//   - Projector rate. Once a second the stored positions and the topic's end
//     offsets give how many records the projector has made durable and how
//     far behind it is, during the load and while it drains afterwards.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/ext"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/stores"
	"github.com/companyos/companyos/projections/cogs"
)

// e2eConfig holds the flags of the end-to-end mode.
type e2eConfig struct {
	enabled      bool
	brokers      string
	chAddr, chDB string
	metricsURL   string
	sampleEvery  int
	poll         time.Duration
	drainTimeout time.Duration
	chPID        int
}

func (e *e2eConfig) flags(fs *flag.FlagSet) {
	fs.BoolVar(&e.enabled, "e2e", false, "end to end against --url: HTTP → Kafka → ClickHouse (zero loss, DLQ, freshness, projector rate)")
	fs.StringVar(&e.brokers, "kafka-brokers", "", "--e2e: the server's Kafka brokers, comma-separated (companyos dev --kafka-addr)")
	fs.StringVar(&e.chAddr, "clickhouse-addr", "127.0.0.1:9000", "--e2e: ClickHouse native address")
	fs.StringVar(&e.chDB, "clickhouse-database", "", "--e2e: the server's ClickHouse database (companyos dev --clickhouse-database)")
	fs.StringVar(&e.metricsURL, "metrics-url", "", "--e2e: the server's telemetry base URL (optional): cogs flush metrics are read before and after")
	fs.IntVar(&e.sampleEvery, "sample-every", 1000, "--e2e: every N-th event is a freshness probe")
	fs.DurationVar(&e.poll, "poll-interval", 200*time.Millisecond, "--e2e: how often ClickHouse is asked which probes are visible")
	fs.DurationVar(&e.drainTimeout, "drain-timeout", 5*time.Minute, "--e2e: how long to wait after the load for the projector to catch up")
	fs.IntVar(&e.chPID, "clickhouse-pid", 0, "--e2e: also report the ClickHouse server's CPU (Linux)")
}

func (e e2eConfig) validate(c config) error {
	var errs []error
	if c.url == "" || c.tokenFile == "" {
		errs = append(errs, errors.New("--e2e needs --url and --token-file (a running companyos dev)"))
	}
	if e.brokers == "" || e.chDB == "" {
		errs = append(errs, errors.New("--e2e needs --kafka-brokers and --clickhouse-database"))
	}
	if e.sampleEvery < 1 || e.poll <= 0 || e.drainTimeout <= 0 {
		errs = append(errs, errors.New("--sample-every, --poll-interval and --drain-timeout must be positive"))
	}
	return errors.Join(errs...)
}

// e2eRun is the state of one end-to-end run, shared with the load runner.
type e2eRun struct {
	cfg         e2eConfig
	runID, team string
	probeSource string
	sampleEvery uint64

	acceptedN atomic.Uint64 // events accepted (202, not duplicate), warm-up included
	quarters  atomic.Uint64 // Σ 4 × quantity of those (quantity of event n is n%1000 + 0.25)
	unknown   atomic.Uint64 // events of requests whose outcome is unknown (transport error, non-202)

	mu      sync.Mutex
	probes  []*probe
	pending map[string]*probe // by id, not yet visible
}

type probe struct {
	id, tenant     string
	sent, acked    time.Time // scheduled send; 202 received
	visible        time.Time // end of the first poll that saw it
	ackToVisibleMS float64
}

func newE2ERun(cfg e2eConfig) *e2eRun {
	id := strconv.FormatInt(time.Now().UnixNano(), 36)
	return &e2eRun{cfg: cfg, runID: id, team: "ml-" + id, probeSource: "//meterload/" + id + "/probe",
		sampleEvery: uint64(cfg.sampleEvery), pending: map[string]*probe{}}
}

// source of event n: probes have their own, so that polling for them is cheap.
func (e *e2eRun) source(n uint64) string {
	if n%e.sampleEvery == 0 {
		return e.probeSource
	}
	return "//meterload/" + e.runID + "/agent-" + strconv.FormatUint(n%64, 10)
}

// accepted records that event n was acknowledged.
func (e *e2eRun) accepted(n uint64, sent, acked time.Time, tenants int) {
	e.acceptedN.Add(1)
	e.quarters.Add(4*(n%1000) + 1)
	if n%e.sampleEvery != 0 {
		return
	}
	p := &probe{id: e.runID + "-" + strconv.FormatUint(n, 10), tenant: "bench-" + strconv.FormatUint(n%uint64(tenants), 10),
		sent: sent, acked: acked}
	e.mu.Lock()
	e.probes = append(e.probes, p)
	e.pending[p.id] = p
	e.mu.Unlock()
}

// E2EResult is the summary of an end-to-end run.
type E2EResult struct {
	Ingest         *Result `json:"ingest"` // HTTP → Kafka ack, as without --e2e
	RunID          string  `json:"run_id"`
	Team           string  `json:"team_tag"`
	Accepted       uint64  `json:"events_accepted_total"` // warm-up included
	UnknownOutcome uint64  `json:"events_unknown_outcome"`
	ExpectedSum    string  `json:"expected_quantity_sum"`

	RawRows        uint64 `json:"clickhouse_raw_rows"`
	DistinctEvents uint64 `json:"clickhouse_distinct_events"`
	RawSum         string `json:"clickhouse_quantity_sum"`
	UsageEvents    uint64 `json:"usage_hourly_events"`
	UsageSum       string `json:"usage_hourly_quantity_sum"`
	Lost           int64  `json:"lost"` // accepted − distinct events in ClickHouse
	ZeroLoss       bool   `json:"zero_loss"`
	DLQRecords     int64  `json:"dlq_records"`

	Freshness         freshness       `json:"freshness_ms"`
	FreshnessTimeline []freshSecond   `json:"freshness_timeline"`
	Projector         projectorResult `json:"projector"`
	Timeline          []lagSecond     `json:"lag_timeline"`
	CPU               e2eCPU          `json:"cpu"`
	LoadAvgStart      string          `json:"loadavg_start"`
	LoadAvgEnd        string          `json:"loadavg_end"`

	Meets50k       bool   `json:"meets_50k_sustained"`
	MeetsFreshness bool   `json:"meets_p95_5s"`
	Error          string `json:"error,omitempty"`
}

type freshness struct {
	Samples       int     `json:"samples"`
	Unseen        int     `json:"unseen"`
	P50           float64 `json:"p50"`
	P95           float64 `json:"p95"`
	P99           float64 `json:"p99"`
	Max           float64 `json:"max"`
	Mean          float64 `json:"mean"`
	SentP95       float64 `json:"from_send_p95"` // from the scheduled send, queueing included
	PollInterval  float64 `json:"poll_interval"`
	PollQueryP50  float64 `json:"poll_query_p50"`
	PollQueryMax  float64 `json:"poll_query_max"`
	PollQueryRuns int     `json:"poll_queries"`
}

// freshSecond is freshness of the probes acknowledged in a 10 s slice.
type freshSecond struct {
	T   int     `json:"t_s"`
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P95 float64 `json:"p95_ms"`
	Max float64 `json:"max_ms"`
}

type lagSecond struct {
	T         float64 `json:"t_s"`
	Produced  int64   `json:"produced"`  // records on metering.events.v1 since the start
	Projected int64   `json:"projected"` // of them, below the stored positions
	Lag       int64   `json:"lag"`
}

type projectorResult struct {
	Produced        int64              `json:"records_produced"`
	WindowPerSec    float64            `json:"window_records_per_sec"` // projected during the measured window
	LagAtLoadEnd    int64              `json:"lag_at_load_end"`
	MaxLag          int64              `json:"max_lag"`          // records produced but not yet below the stored positions, worst second
	CatchUpSeconds  float64            `json:"catch_up_seconds"` // from the load's end until positions reached the end offsets
	DrainPerSec     float64            `json:"drain_records_per_sec"`
	EndToEndPerSec  float64            `json:"end_to_end_events_per_sec"` // distinct events / (first post → caught up)
	CaughtUp        bool               `json:"caught_up"`
	Flushes         float64            `json:"flushes"`
	FlushMSAvg      float64            `json:"flush_ms_avg"`
	StepMSAvg       map[string]float64 `json:"flush_step_ms_avg"`
	ProjectorEvents map[string]float64 `json:"cogs_metering_events"`
}

type e2eCPU struct {
	WindowSec  float64 `json:"window_s"` // first post → caught up
	Server     float64 `json:"server_pct,omitempty"`
	ClickHouse float64 `json:"clickhouse_pct,omitempty"`
	Machine    float64 `json:"machine_busy_pct"`
	Cores      int     `json:"cores"`
}

func runE2E(ctx context.Context, c config, token string, stdout, stderr io.Writer) int {
	e := newE2ERun(c.e2e)
	res, err := e.run(ctx, c, token, stderr)
	if err != nil {
		if res == nil {
			fmt.Fprintln(stderr, "meterload:", err)
			return 1
		}
		res.Error = err.Error()
	}
	if c.asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
	} else {
		res.print(stdout)
	}
	if err != nil || !res.ZeroLoss || res.DLQRecords != 0 {
		return 1
	}
	return 0
}

func (e *e2eRun) run(ctx context.Context, c config, token string, logw io.Writer) (*E2EResult, error) {
	conn, err := stores.EnsureClickHouse(ctx, e.cfg.chAddr, e.cfg.chDB)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := cogs.CheckMigrated(ctx, conn); err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(e.cfg.brokers, ",")...))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)

	out := &E2EResult{RunID: e.runID, Team: e.team, LoadAvgStart: loadAvg()}
	dlq0, err := endOffsets(ctx, adm, events.TopicDLQ)
	if err != nil {
		return nil, err
	}
	meter0, err := endOffsets(ctx, adm, events.TopicMetering)
	if err != nil {
		return nil, err
	}
	pos0, err := meteringPositions(ctx, conn)
	if err != nil {
		return nil, err
	}
	m0 := scrapeMetrics(e.cfg.metricsURL)
	start := time.Now()
	cpu0 := e.sampleCPU(c.serverPID)
	fmt.Fprintf(logw, "meterload: e2e run %s (team tag %s): %s at %.0f events/s for %s + %s warm-up\n",
		e.runID, e.team, c.url, c.rate, c.duration, c.warmup)

	// Monitor the projector once a second and poll the probes.
	mctx, stopMonitors := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	var tlMu sync.Mutex
	var timeline []lagSecond
	sample := func() (lagSecond, bool) {
		sctx, cancel := context.WithTimeout(mctx, 5*time.Second)
		defer cancel()
		ends, err1 := endOffsets(sctx, adm, events.TopicMetering)
		pos, err2 := meteringPositions(sctx, conn)
		if err1 != nil || err2 != nil {
			return lagSecond{}, false
		}
		s := lagSecond{T: time.Since(start).Seconds(), Produced: sumSince(ends, meter0), Projected: sumSince(pos, pos0)}
		s.Lag = lagOf(ends, pos)
		return s, true
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-mctx.Done():
				return
			case <-t.C:
			}
			if s, ok := sample(); ok {
				tlMu.Lock()
				timeline = append(timeline, s)
				tlMu.Unlock()
			}
		}
	}()
	var pollTimes []time.Duration
	go func() {
		defer wg.Done()
		pollTimes = e.pollProbes(mctx, conn)
	}()

	out.Ingest = loadWith(ctx, c, token, e)
	loadEnd := time.Now()
	ends, err := endOffsets(context.WithoutCancel(ctx), adm, events.TopicMetering)
	if err != nil {
		stopMonitors()
		wg.Wait()
		return nil, err
	}
	lagEnd, _ := sample()
	out.Projector.LagAtLoadEnd = lagEnd.Lag
	fmt.Fprintf(logw, "meterload: load done (%d events accepted, projector lag %d records); waiting for the projector\n",
		e.acceptedN.Load(), lagEnd.Lag)

	// Wait until the stored positions cover every record produced.
	deadline := loadEnd.Add(e.cfg.drainTimeout)
	var caughtAt time.Time
	for time.Now().Before(deadline) {
		pos, err := meteringPositions(context.WithoutCancel(ctx), conn)
		if err == nil && lagOf(ends, pos) == 0 {
			caughtAt = time.Now()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cpu1 := e.sampleCPU(c.serverPID)
	out.Projector.CaughtUp = !caughtAt.IsZero()
	if !out.Projector.CaughtUp {
		caughtAt = time.Now()
	}
	// The probes are visible by now (rows are written before positions);
	// give the poller a few rounds to see the last ones.
	for i := 0; i < 50 && e.pendingCount() > 0; i++ {
		time.Sleep(e.cfg.poll)
	}
	stopMonitors()
	wg.Wait()
	out.LoadAvgEnd = loadAvg()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()

	// Zero loss: the run's distinct events, raw and hourly, against what was accepted.
	out.Accepted, out.UnknownOutcome = e.acceptedN.Load(), e.unknown.Load()
	expected := new(big.Rat).SetFrac(new(big.Int).SetUint64(e.quarters.Load()), big.NewInt(4))
	out.ExpectedSum = cogs.RatString(expected)
	var rawSum, usageSum cogs.Decimal
	if err := conn.QueryRow(fctx, `SELECT count(), sum(n), sum(q) FROM (
			SELECT tenant, hour, source, id, any(quantity) AS q, count() AS n
			FROM metering_events WHERE team = ? GROUP BY tenant, hour, source, id)`, e.team).
		Scan(&out.DistinctEvents, &out.RawRows, &rawSum); err != nil {
		return out, fmt.Errorf("count events: %w", err)
	}
	if err := conn.QueryRow(fctx, `SELECT sum(events), sum(quantity) FROM usage_hourly_current WHERE team = ?`, e.team).
		Scan(&out.UsageEvents, &usageSum); err != nil {
		return out, fmt.Errorf("count hourly usage: %w", err)
	}
	out.RawSum, out.UsageSum = rawSum.String(), usageSum.String()
	out.Lost = int64(out.Accepted) - int64(out.DistinctEvents)
	out.ZeroLoss = out.Lost <= 0 && out.UnknownOutcome == 0 && out.DistinctEvents == out.Accepted &&
		out.UsageEvents == out.Accepted && rawSum.Rat().Cmp(expected) == 0 && usageSum.Rat().Cmp(expected) == 0

	dlq1, err := endOffsets(fctx, adm, events.TopicDLQ)
	if err != nil {
		return out, err
	}
	out.DLQRecords = sumSince(dlq1, dlq0)

	// Freshness.
	e.mu.Lock()
	var ack, sent []float64
	fresh := map[int][]float64{}
	for _, p := range e.probes {
		if p.visible.IsZero() {
			out.Freshness.Unseen++
			continue
		}
		d := ms(p.visible.Sub(p.acked))
		ack = append(ack, d)
		sent = append(sent, ms(p.visible.Sub(p.sent)))
		slice := int(p.acked.Sub(start).Seconds()) / 10 * 10
		fresh[slice] = append(fresh[slice], d)
	}
	out.Freshness.Samples = len(e.probes)
	e.mu.Unlock()
	f := &out.Freshness
	f.P50, f.P95, f.P99, f.Max, f.Mean = quantile(ack, .5), quantile(ack, .95), quantile(ack, .99), quantile(ack, 1), mean(ack)
	f.SentP95 = quantile(sent, .95)
	f.PollInterval = ms(e.cfg.poll)
	pq := make([]float64, len(pollTimes))
	for i, d := range pollTimes {
		pq[i] = ms(d)
	}
	f.PollQueryRuns, f.PollQueryP50, f.PollQueryMax = len(pq), quantile(pq, .5), quantile(pq, 1)
	slices := make([]int, 0, len(fresh))
	for s := range fresh {
		slices = append(slices, s)
	}
	sort.Ints(slices)
	for _, s := range slices {
		v := fresh[s]
		out.FreshnessTimeline = append(out.FreshnessTimeline, freshSecond{T: s, N: len(v), P50: quantile(v, .5), P95: quantile(v, .95), Max: quantile(v, 1)})
	}

	// Projector.
	pr := &out.Projector
	pr.Produced = sumSince(ends, meter0)
	out.Timeline = timeline
	for _, s := range timeline {
		pr.MaxLag = max(pr.MaxLag, s.Lag)
	}
	wStart, wEnd := c.warmup.Seconds(), c.warmup.Seconds()+out.Ingest.WindowSec
	if a, b, ok := around(timeline, wStart, wEnd); ok && b.T > a.T {
		pr.WindowPerSec = float64(b.Projected-a.Projected) / (b.T - a.T)
	}
	pr.CatchUpSeconds = caughtAt.Sub(loadEnd).Seconds()
	if pr.CatchUpSeconds > 0 && pr.CaughtUp {
		pr.DrainPerSec = float64(lagEnd.Lag) / pr.CatchUpSeconds
	}
	pr.EndToEndPerSec = float64(out.DistinctEvents) / caughtAt.Sub(start).Seconds()
	m1 := scrapeMetrics(e.cfg.metricsURL)
	if m0 != nil && m1 != nil {
		d := func(k string) float64 { return m1[k] - m0[k] }
		pr.Flushes = d("cogs_flush_seconds_count")
		if pr.Flushes > 0 {
			pr.FlushMSAvg = 1000 * d("cogs_flush_seconds_sum") / pr.Flushes
		}
		pr.StepMSAvg, pr.ProjectorEvents = map[string]float64{}, map[string]float64{}
		for _, s := range []string{"lookup", "events", "buckets_read", "buckets_write", "prices", "positions"} {
			lbl := `{step="` + s + `"}`
			if n := d("cogs_flush_step_seconds_count" + lbl); n > 0 {
				pr.StepMSAvg[s] = 1000 * d("cogs_flush_step_seconds_sum"+lbl) / n
			}
		}
		for _, r := range []string{cogs.ResultAccepted, cogs.ResultDuplicate, cogs.ResultDLQ} {
			pr.ProjectorEvents[r] = d(`cogs_metering_events_total{result="` + r + `"}`)
		}
	}
	out.CPU = cpu1.since(cpu0)

	out.Meets50k = out.Ingest.EventsPerSec >= 0.98*50000 && pr.WindowPerSec >= 0.98*50000 && out.ZeroLoss
	out.MeetsFreshness = f.Samples > 0 && f.Unseen == 0 && f.P95 <= 5000
	if !pr.CaughtUp {
		return out, fmt.Errorf("the projector did not catch up within %s (lag %d)", e.cfg.drainTimeout, lagOf(ends, mustPositions(conn)))
	}
	return out, nil
}

func (e *e2eRun) pendingCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.pending)
}

// pollProbes asks ClickHouse every poll interval which pending probes are
// visible, until ctx ends; it returns how long each poll query took.
func (e *e2eRun) pollProbes(ctx context.Context, conn driver.Conn) []time.Duration {
	var took []time.Duration
	minHour := time.Now().UTC().Truncate(time.Hour).Add(-time.Hour).Unix()
	t := time.NewTicker(e.cfg.poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return took
		case <-t.C:
		}
		e.mu.Lock()
		batch := make([]*probe, 0, len(e.pending))
		for _, p := range e.pending {
			batch = append(batch, p)
		}
		e.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		tbl, err := ext.NewTable("probes", ext.Column("tenant", "String"), ext.Column("id", "String"))
		if err != nil {
			continue
		}
		for _, p := range batch {
			_ = tbl.Append(p.tenant, p.id)
		}
		q0 := time.Now()
		rows, err := conn.Query(clickhouse.Context(ctx, clickhouse.WithExternalTable(tbl)),
			`SELECT id FROM metering_events
			 WHERE tenant IN (SELECT tenant FROM probes) AND hour >= toDateTime(`+strconv.FormatInt(minHour, 10)+`)
			   AND source = ? AND id IN (SELECT id FROM probes)`, e.probeSource)
		if err != nil {
			continue
		}
		var seen []string
		for rows.Next() {
			var id string
			if rows.Scan(&id) == nil {
				seen = append(seen, id)
			}
		}
		rows.Close()
		now := time.Now()
		took = append(took, now.Sub(q0))
		e.mu.Lock()
		for _, id := range seen {
			if p := e.pending[id]; p != nil {
				p.visible = now
				delete(e.pending, id)
			}
		}
		e.mu.Unlock()
	}
}

type e2eCPUSample struct {
	cpuSample
	ch     time.Duration
	haveCH bool
}

func (e *e2eRun) sampleCPU(serverPID int) e2eCPUSample {
	s := e2eCPUSample{cpuSample: sampleCPU(serverPID)}
	if e.cfg.chPID > 0 {
		s.ch, s.haveCH = procCPU(strconv.Itoa(e.cfg.chPID))
	}
	return s
}

func (s e2eCPUSample) since(old e2eCPUSample) e2eCPU {
	c := s.cpuSample.since(old.cpuSample)
	out := e2eCPU{WindowSec: s.at.Sub(old.at).Seconds(), Server: c.Server, Machine: c.Machine, Cores: c.Cores}
	if s.haveCH && old.haveCH {
		out.ClickHouse = 100 * (s.ch - old.ch).Seconds() / out.WindowSec
	}
	return out
}

func endOffsets(ctx context.Context, adm *kadm.Client, topic string) (map[int32]int64, error) {
	l, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	out := map[int32]int64{}
	var lerr error
	l.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			lerr = o.Err
		}
		out[o.Partition] = o.Offset
	})
	if lerr != nil {
		return nil, fmt.Errorf("end offsets of %s: %w", topic, lerr)
	}
	return out, nil
}

func meteringPositions(ctx context.Context, conn driver.Conn) (map[int32]int64, error) {
	ps, err := cogs.StoredPositions(ctx, conn)
	if err != nil {
		return nil, err
	}
	if ps[events.TopicMetering] == nil {
		return map[int32]int64{}, nil
	}
	return ps[events.TopicMetering], nil
}

func mustPositions(conn driver.Conn) map[int32]int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, _ := meteringPositions(ctx, conn)
	return p
}

func sumSince(now, before map[int32]int64) int64 {
	var n int64
	for p, o := range now {
		n += o - before[p]
	}
	return n
}

// lagOf is how many records below the end offsets are not yet below the
// positions.
func lagOf(ends, pos map[int32]int64) int64 {
	var n int64
	for p, end := range ends {
		if d := end - pos[p]; d > 0 {
			n += d
		}
	}
	return n
}

// around returns the timeline samples nearest to t0 and t1.
func around(tl []lagSecond, t0, t1 float64) (a, b lagSecond, ok bool) {
	if len(tl) < 2 {
		return a, b, false
	}
	near := func(t float64) lagSecond {
		best := tl[0]
		for _, s := range tl {
			if abs(s.T-t) < abs(best.T-t) {
				best = s
			}
		}
		return best
	}
	return near(t0), near(t1), true
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

// quantile of v (nearest rank); q = 1 is the maximum. v is sorted in place.
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	i := int(q*float64(len(v))+0.5) - 1
	return v[min(max(i, 0), len(v)-1)]
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

// scrapeMetrics reads a Prometheus text exposition into series → value
// (nil when url is empty or unreachable).
func scrapeMetrics(url string) map[string]float64 {
	if url == "" {
		return nil
	}
	resp, err := http.Get(strings.TrimRight(url, "/") + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}

func loadAvg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

func (r *E2EResult) print(w io.Writer) {
	r.Ingest.print(w)
	fmt.Fprintf(w, "\nend to end, run %s (tag team=%s), load average %s → %s\n", r.RunID, r.Team, r.LoadAvgStart, r.LoadAvgEnd)
	fmt.Fprintf(w, "accepted %d events (warm-up included), %d of unknown outcome; expected Σ quantity %s\n",
		r.Accepted, r.UnknownOutcome, r.ExpectedSum)
	fmt.Fprintf(w, "ClickHouse: %d distinct events (%d raw rows), Σ %s; usage_hourly_current %d events, Σ %s\n",
		r.DistinctEvents, r.RawRows, r.RawSum, r.UsageEvents, r.UsageSum)
	fmt.Fprintf(w, "zero loss: %s (lost %d); DLQ records during the run: %d\n", yesNo(r.ZeroLoss), r.Lost, r.DLQRecords)
	f := r.Freshness
	fmt.Fprintf(w, "freshness (202 → visible in metering_events), %d probes, %d unseen: p50 %.0f  p95 %.0f  p99 %.0f  max %.0f  mean %.0f ms (from scheduled send p95 %.0f ms; poll every %.0f ms, poll query p50 %.1f max %.1f ms)\n",
		f.Samples, f.Unseen, f.P50, f.P95, f.P99, f.Max, f.Mean, f.SentP95, f.PollInterval, f.PollQueryP50, f.PollQueryMax)
	for _, s := range r.FreshnessTimeline {
		fmt.Fprintf(w, "  t=%3ds..%3ds  %4d probes  p50 %6.0f  p95 %6.0f  max %6.0f ms\n", s.T, s.T+10, s.N, s.P50, s.P95, s.Max)
	}
	p := r.Projector
	fmt.Fprintf(w, "projector: %d records produced; %.0f records/s made durable during the measured window; lag max %d, at load end %d; caught up %s after it (%.0f records/s draining); end to end %.0f events/s (first post → caught up)\n",
		p.Produced, p.WindowPerSec, p.MaxLag, p.LagAtLoadEnd, time.Duration(p.CatchUpSeconds*float64(time.Second)).Round(10*time.Millisecond), p.DrainPerSec, p.EndToEndPerSec)
	if p.Flushes > 0 {
		fmt.Fprintf(w, "  %.0f flushes, %.0f ms per flush:", p.Flushes, p.FlushMSAvg)
		for _, s := range []string{"lookup", "events", "buckets_read", "buckets_write", "prices", "positions"} {
			fmt.Fprintf(w, " %s %.0f", s, p.StepMSAvg[s])
		}
		fmt.Fprintf(w, " ms; projector counted %v\n", p.ProjectorEvents)
	}
	fmt.Fprintf(w, "cpu over %.1fs (%% of one core, %d cores): server %.0f%%, ClickHouse %.0f%%, machine busy %.0f%%\n",
		r.CPU.WindowSec, r.CPU.Cores, r.CPU.Server, r.CPU.ClickHouse, r.CPU.Machine)
	fmt.Fprintf(w, "target ≥ 50,000 events/s sustained end to end with zero loss: %s; freshness p95 ≤ 5 s: %s; DLQ 0: %s\n",
		yesNo(r.Meets50k), yesNo(r.MeetsFreshness), yesNo(r.DLQRecords == 0))
	if r.Error != "" {
		fmt.Fprintf(w, "error: %s\n", r.Error)
	}
}
