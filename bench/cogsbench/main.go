// Command cogsbench measures the cogs projector (Kafka → ClickHouse) and
// checks its result end to end: it generates the metering fixture
// (bench/meterfixture), produces it and the price catalog (as signed
// pricing.set receipts) to an embedded Kafka broker reached over TCP,
// drains the backlog with a fresh projector into a fresh ClickHouse
// database, and reports events/s and the fixture report (attribution
// error, anomalies found).
//
//	go run ./bench/cogsbench --tenants 20 --days 30 --seed 7
//	go run ./bench/cogsbench --stream 1000000 --prefill 1000000   # live ingest's shape (stream.go)
//
// It needs a ClickHouse server (deploy/local/up.sh) and drops its database
// at the end unless --keep.
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/bench/meterfixture"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/stores"
	"github.com/companyos/companyos/projections/cogs"
)

// Options configure one run.
type Options struct {
	Fixture        meterfixture.Config
	ClickHouseAddr string
	Database       string // default cogsbench_<random>
	Keep           bool   // keep the database
	Partitions     int32  // of metering.events.v1
	BatchSize      int
	FlushInterval  time.Duration
	CPUProfile     string // write a CPU profile of the drain here
}

// Result is what a run measured.
type Result struct {
	Records        int                `json:"records"`
	Events         int                `json:"events"`
	ProduceSeconds float64            `json:"produce_seconds"`
	DrainSeconds   float64            `json:"drain_seconds"`
	RecordsPerSec  float64            `json:"records_per_sec"`
	Flushes        uint64             `json:"flushes"`
	FlushSecsAvg   float64            `json:"flush_seconds_avg"`
	StepSecsAvg    map[string]float64 `json:"flush_step_seconds_avg"`
	CPUSeconds     float64            `json:"cpu_seconds"` // this process (broker, projector) while draining
	QuerySeconds   map[string]float64 `json:"query_seconds"`
	Report         meterfixture.Report
	Database       string `json:"database"`
	GoMaxProcs     int    `json:"gomaxprocs"`
}

func main() {
	var o Options
	var jsonOut bool
	var start string
	fs := flag.NewFlagSet("cogsbench", flag.ExitOnError)
	fs.IntVar(&o.Fixture.Tenants, "tenants", 20, "tenants")
	fs.IntVar(&o.Fixture.Days, "days", 30, "days")
	fs.Uint64Var(&o.Fixture.Seed, "seed", 7, "generator seed")
	fs.StringVar(&start, "start", "2026-06-01", "first day (UTC)")
	fs.StringVar(&o.ClickHouseAddr, "clickhouse-addr", "127.0.0.1:9000", "ClickHouse native address")
	fs.StringVar(&o.Database, "clickhouse-database", "", "database to create and fill (default cogsbench_<random>)")
	fs.BoolVar(&o.Keep, "keep", false, "keep the database afterwards")
	var parts int
	fs.IntVar(&parts, "partitions", 6, "partitions of metering.events.v1")
	fs.IntVar(&o.BatchSize, "batch-size", 10000, "projector batch size")
	fs.DurationVar(&o.FlushInterval, "flush-interval", time.Second, "projector flush interval")
	fs.BoolVar(&jsonOut, "json", false, "print the result as JSON")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the drain to this file")
	stream := fs.Int("stream", 0, "instead of the fixture: this many events of the current hour (live ingest's shape, see stream.go)")
	prefill := fs.Int("prefill", 0, "with --stream: first project this many events of the same hour, unmeasured")
	streamTenants := fs.Int("stream-tenants", 8, "with --stream: tenants")
	chPID := fs.Int("clickhouse-pid", 0, "with --stream: also report the ClickHouse server's CPU (Linux)")
	_ = fs.Parse(os.Args[1:])
	o.Partitions = int32(parts)
	t, err := time.Parse("2006-01-02", start)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cogsbench: --start:", err)
		os.Exit(2)
	}
	o.Fixture.Start = t
	o.CPUProfile = *cpuProfile
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *stream > 0 {
		res, err := RunStream(ctx, StreamOptions{Events: *stream, Prefill: *prefill, Tenants: *streamTenants,
			ClickHouseAddr: o.ClickHouseAddr, Database: o.Database, Keep: o.Keep, Partitions: o.Partitions,
			BatchSize: o.BatchSize, FlushInterval: o.FlushInterval, CPUProfile: o.CPUProfile, ClickHousePID: *chPID}, os.Stderr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "cogsbench:", err)
			os.Exit(1)
		}
		if jsonOut {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(res)
		} else {
			PrintStream(os.Stdout, res)
		}
		if !res.Exact {
			os.Exit(1)
		}
		return
	}
	res, err := Run(ctx, o, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cogsbench:", err)
		os.Exit(1)
	}
	if jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
	} else {
		Print(os.Stdout, res)
	}
	if !res.Report.OK {
		os.Exit(1)
	}
}

// Run generates, produces, projects and reports.
func Run(ctx context.Context, o Options, logw io.Writer) (Result, error) {
	res := Result{GoMaxProcs: runtime.GOMAXPROCS(0), QuerySeconds: map[string]float64{}, StepSecsAvg: map[string]float64{}}
	if o.Partitions <= 0 {
		o.Partitions = 6
	}
	if o.Database == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		o.Database = "cogsbench_" + hex.EncodeToString(b[:])
	}
	res.Database = o.Database
	fx, err := meterfixture.Generate(o.Fixture)
	if err != nil {
		return res, err
	}
	res.Records, res.Events = len(fx.Records), fx.Expected.Counts.Events

	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(o.Partitions, events.TopicMetering),
		kfake.SeedTopics(6, events.TopicEvents), kfake.SeedTopics(1, events.TopicDLQ))
	if err != nil {
		return res, err
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()

	conn, err := stores.EnsureClickHouse(ctx, o.ClickHouseAddr, o.Database)
	if err != nil {
		return res, err
	}
	defer conn.Close()
	if !o.Keep {
		defer func() {
			if admin, err := stores.EnsureClickHouse(context.Background(), o.ClickHouseAddr, "default"); err == nil {
				_ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+o.Database)
				admin.Close()
			}
		}()
	}
	if err := cogs.Migrate(ctx, conn); err != nil {
		return res, err
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerBatchMaxBytes(4<<20), kgo.MaxBufferedRecords(1<<18))
	if err != nil {
		return res, err
	}
	defer cl.Close()
	t0 := time.Now()
	receipts, err := priceReceipts(fx.Prices)
	if err != nil {
		return res, err
	}
	recs := make([]*kgo.Record, 0, len(fx.Records)+len(receipts))
	for _, v := range receipts {
		recs = append(recs, &kgo.Record{Topic: events.TopicEvents, Key: []byte("finance"), Value: v})
	}
	for _, r := range fx.Records {
		rec := &kgo.Record{Topic: events.TopicMetering, Value: r.Value}
		if r.Key != "" {
			rec.Key = []byte(r.Key)
		}
		recs = append(recs, rec)
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return res, fmt.Errorf("produce: %w", err)
	}
	res.ProduceSeconds = time.Since(t0).Seconds()
	fmt.Fprintf(logw, "cogsbench: produced %d records in %.1fs; projecting into %s\n", len(recs), res.ProduceSeconds, o.Database)

	reg := prometheus.NewRegistry()
	p, err := cogs.NewProjector(cogs.Config{Brokers: brokers, Conn: conn, BatchSize: o.BatchSize, FlushInterval: o.FlushInterval,
		AnomalyInterval: -1, Registerer: reg, Logger: slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return res, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
		if err != nil {
			cancel()
			return res, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			cancel()
			return res, err
		}
	}
	t1, cpu1 := time.Now(), cpuSeconds()
	go func() { done <- p.Run(runCtx) }()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, events.TopicMetering, events.TopicEvents)
	if err != nil {
		cancel()
		return res, err
	}
	for !caughtUp(ctx, conn, ends) {
		select {
		case err := <-done:
			cancel()
			return res, fmt.Errorf("projector stopped: %v", err)
		case <-ctx.Done():
			cancel()
			return res, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	res.DrainSeconds = time.Since(t1).Seconds()
	res.CPUSeconds = cpuSeconds() - cpu1
	if o.CPUProfile != "" {
		pprof.StopCPUProfile()
	}
	res.RecordsPerSec = float64(len(fx.Records)) / res.DrainSeconds
	cancel()
	if err := <-done; err != nil {
		return res, err
	}
	if mfs, err := reg.Gather(); err == nil {
		for _, mf := range mfs {
			if mf.GetName() == "cogs_flush_step_seconds" {
				for _, m := range mf.GetMetric() {
					if h := m.GetHistogram(); h.GetSampleCount() > 0 {
						res.StepSecsAvg[m.GetLabel()[0].GetValue()] = h.GetSampleSum() / float64(h.GetSampleCount())
					}
				}
			}
			if mf.GetName() == "cogs_flush_seconds" && len(mf.GetMetric()) > 0 {
				h := mf.GetMetric()[0].GetHistogram()
				res.Flushes = h.GetSampleCount()
				if res.Flushes > 0 {
					res.FlushSecsAvg = h.GetSampleSum() / float64(res.Flushes)
				}
			}
		}
	}

	t2 := time.Now()
	costs, err := cogs.CostPerTenantDay(ctx, conn)
	if err != nil {
		return res, err
	}
	res.QuerySeconds[cogs.QueryCostPerTenantDay] = time.Since(t2).Seconds()
	t3 := time.Now()
	anomalies, err := cogs.DayAnomalies(ctx, conn)
	if err != nil {
		return res, err
	}
	res.QuerySeconds[cogs.QueryAnomaliesDay] = time.Since(t3).Seconds()
	for _, q := range []string{cogs.QueryAnomaliesHour, cogs.QueryCostPerTag, cogs.QueryTopTenants} {
		t := time.Now()
		if _, err := cogs.RunQuery(ctx, conn, q); err != nil {
			return res, err
		}
		res.QuerySeconds[q] = time.Since(t).Seconds()
	}
	res.Report = meterfixture.Compare(fx.Expected, costs, anomalies)
	return res, nil
}

func caughtUp(ctx context.Context, conn driver.Conn, ends kadm.ListedOffsets) bool {
	stored, err := cogs.StoredPositions(ctx, conn)
	if err != nil {
		return false
	}
	ok := true
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 && stored[o.Topic][o.Partition] < o.Offset {
			ok = false
		}
	})
	return ok
}

// Print writes a human summary.
func Print(w io.Writer, r Result) {
	fmt.Fprintf(w, "records %d (distinct valid events %d), produced in %.1fs\n", r.Records, r.Events, r.ProduceSeconds)
	fmt.Fprintf(w, "projector drained the backlog in %.2fs: %.0f records/s (GOMAXPROCS %d, %.1f CPU-s in this process), %d flushes, %.0f ms per flush\n",
		r.DrainSeconds, r.RecordsPerSec, r.GoMaxProcs, r.CPUSeconds, r.Flushes, r.FlushSecsAvg*1000)
	for _, s := range []string{"lookup", "events", "buckets_read", "buckets_write", "prices", "positions"} {
		fmt.Fprintf(w, "  flush step %-13s %6.0f ms\n", s, r.StepSecsAvg[s]*1000)
	}
	for q, s := range r.QuerySeconds {
		fmt.Fprintf(w, "query %s: %.2fs\n", q, s)
	}
	r.Report.WriteText(w)
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// priceReceipts signs the catalog as allowed pricing.set receipts of one
// "finance" chain, as the command processor would.
func priceReceipts(ps []cogs.PriceSet) ([][]byte, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer := events.NewSigner(key)
	chain := events.NewChain()
	var out [][]byte
	for i, p := range ps {
		payload, err := json.Marshal(p)
		if err != nil {
			return nil, err
		}
		cmd, _ := json.Marshal(map[string]any{"type": cogs.ActionPricingSet, "payload": json.RawMessage(payload)})
		seq, prev := chain.Next()
		r := events.Receipt{ID: fmt.Sprintf("rcpt_fixture_price_%d", i+1), Action: cogs.ActionPricingSet, Actor: "user:finance-bench",
			Tenant: "finance", Decision: events.DecisionAllow, EvidenceHash: events.EvidenceHash([]byte("{}")), PolicyVersion: "bench",
			CreatedAt: time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC), Selective: map[string]string{}, Seq: seq, PrevHash: prev,
			CommandID: fmt.Sprintf("cmd_fixture_price_%d", i+1), Rationale: json.RawMessage(`[]`), Obligations: json.RawMessage(`[]`),
			Subject: "price:" + p.Meter, Command: cmd, Change: json.RawMessage(`null`)}
		b, err := events.MarshalReceipt(r)
		if err != nil {
			return nil, err
		}
		if err := chain.Append(r, b); err != nil {
			return nil, err
		}
		v, err := signer.Sign(b).Marshal()
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
