package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/stores"
	"github.com/companyos/companyos/metering"
	"github.com/companyos/companyos/projections/cogs"
)

// StreamOptions configure a --stream run: the shape of live ingest rather
// than the fixture's month of history. Every event is in the current hour
// (as from `meterload`: tenants bench-0..7, 16 services, one region, unique
// ids), which is the projector's worst case for its duplicate look-up: the
// batch's keys all fall into the (tenant, hour) ranges that keep growing.
type StreamOptions struct {
	Events         int // measured: produced, then drained
	Prefill        int // produced and drained first, unmeasured: the hour already holds this many
	Tenants        int
	ClickHouseAddr string
	Database       string
	Keep           bool
	Partitions     int32
	BatchSize      int
	FlushInterval  time.Duration
	CPUProfile     string
	ClickHousePID  int // optional: report the server's CPU
}

// StreamResult is what a --stream run measured.
type StreamResult struct {
	Events               int                `json:"events"`
	Prefill              int                `json:"prefill"`
	DrainSeconds         float64            `json:"drain_seconds"`
	RecordsPerSec        float64            `json:"records_per_sec"`
	CPUSeconds           float64            `json:"cpu_seconds"` // this process: broker + projector
	ClickHouseCPUSeconds float64            `json:"clickhouse_cpu_seconds,omitempty"`
	LoadAvg              string             `json:"loadavg"`
	Flushes              uint64             `json:"flushes"`
	FlushSecsAvg         float64            `json:"flush_seconds_avg"`
	StepSecsAvg          map[string]float64 `json:"flush_step_seconds_avg"`
	Timeline             []streamSecond     `json:"timeline"`
	Distinct             uint64             `json:"clickhouse_distinct_events"`
	UsageEvents          uint64             `json:"usage_hourly_events"`
	Exact                bool               `json:"exact"` // counts and sums equal what was produced
	Database             string             `json:"database"`
}

type streamSecond struct {
	T         float64            `json:"t_s"`
	Projected int64              `json:"projected"`
	PerSec    float64            `json:"records_per_sec"`
	StepMS    map[string]float64 `json:"step_ms"` // average of the flushes that ended in this slice
	Flushes   uint64             `json:"flushes"`
}

// RunStream produces prefill events and drains them, then produces the
// measured events and times their drain.
func RunStream(ctx context.Context, o StreamOptions, logw io.Writer) (StreamResult, error) {
	res := StreamResult{Events: o.Events, Prefill: o.Prefill, StepSecsAvg: map[string]float64{}}
	if o.Partitions <= 0 {
		o.Partitions = 6
	}
	if o.Tenants <= 0 {
		o.Tenants = 8
	}
	if o.Database == "" {
		o.Database = "cogsbench_stream_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	res.Database = o.Database
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
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerBatchMaxBytes(4<<20), kgo.MaxBufferedRecords(1<<18),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	if err != nil {
		return res, err
	}
	defer cl.Close()
	runID := strconv.FormatInt(time.Now().UnixNano(), 36)
	quarters := new(big.Int)
	produce := func(from, n int) error {
		now := time.Now().UTC()
		recs := make([]*kgo.Record, 0, 10000)
		for i := from; i < from+n; i++ {
			e := metering.Event{SpecVersion: "1.0", ID: runID + "-" + strconv.Itoa(i), Source: "//cogsbench/agent-" + strconv.Itoa(i%64),
				Type: "compute.cpu_seconds", Subject: "bench-" + strconv.Itoa(i%o.Tenants), Time: now,
				Data: metering.Data{Quantity: strconv.Itoa(i%1000) + ".25", Unit: "second",
					Tags: map[string]string{"service": "svc-" + strconv.Itoa(i%16), "region": "eu-west-1"}}}
			quarters.Add(quarters, big.NewInt(int64(4*(i%1000)+1)))
			recs = append(recs, metering.Record(e))
			if len(recs) == cap(recs) || i == from+n-1 {
				if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
					return fmt.Errorf("produce: %w", err)
				}
				recs = recs[:0]
			}
		}
		return nil
	}
	reg := prometheus.NewRegistry()
	p, err := cogs.NewProjector(cogs.Config{Brokers: brokers, Conn: conn, BatchSize: o.BatchSize, FlushInterval: o.FlushInterval,
		AnomalyInterval: -1, Registerer: reg, Logger: slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return res, err
	}
	adm := kadm.NewClient(cl)
	var runCtx context.Context
	var cancel context.CancelFunc = func() {}
	defer func() { cancel() }()
	done := make(chan error, 1)
	start := func() {
		runCtx, cancel = context.WithCancel(ctx)
		go func() { done <- p.Run(runCtx) }()
	}
	drain := func() error {
		ends, err := adm.ListEndOffsets(ctx, events.TopicMetering, events.TopicEvents)
		if err != nil {
			return err
		}
		for !caughtUp(ctx, conn, ends) {
			select {
			case err := <-done:
				return fmt.Errorf("projector stopped: %v", err)
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
		return nil
	}
	if o.Prefill > 0 {
		if err := produce(0, o.Prefill); err != nil {
			return res, err
		}
		fmt.Fprintf(logw, "cogsbench: prefill: %d events of the current hour\n", o.Prefill)
		start()
		t := time.Now()
		if err := drain(); err != nil {
			return res, err
		}
		cancel()
		if err := <-done; err != nil {
			return res, err
		}
		fmt.Fprintf(logw, "cogsbench: prefill drained in %.1fs\n", time.Since(t).Seconds())
	}
	// Produce the measured events with no projector running, then start
	// one (as after a restart: it loads what the hour already holds) and
	// time its drain.
	t0 := time.Now()
	if err := produce(o.Prefill, o.Events); err != nil {
		return res, err
	}
	fmt.Fprintf(logw, "cogsbench: produced %d events in %.1fs\n", o.Events, time.Since(t0).Seconds())
	base := gatherSteps(reg)
	t1, cpu1, ch1 := time.Now(), cpuSeconds(), pidCPUSeconds(o.ClickHousePID)
	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
		if err != nil {
			return res, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, err
		}
	}
	start()
	stopTL := make(chan struct{})
	tlDone := make(chan []streamSecond)
	go func() {
		var tl []streamSecond
		prev, prevT := base, t1
		prevPos := int64(o.Prefill)
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stopTL:
				tlDone <- tl
				return
			case <-tick.C:
			}
			cur, now := gatherSteps(reg), time.Now()
			var pos int64
			if ps, err := cogs.StoredPositions(ctx, conn); err == nil {
				for _, n := range ps[events.TopicMetering] {
					pos += n
				}
			}
			s := streamSecond{T: now.Sub(t1).Seconds(), Projected: pos - int64(o.Prefill), StepMS: map[string]float64{},
				Flushes: cur.flushes - prev.flushes, PerSec: float64(pos-prevPos) / now.Sub(prevT).Seconds()}
			for k, v := range cur.sum {
				if n := cur.count[k] - prev.count[k]; n > 0 {
					s.StepMS[k] = 1000 * (v - prev.sum[k]) / float64(n)
				}
			}
			tl = append(tl, s)
			prev, prevT, prevPos = cur, now, pos
		}
	}()
	err = drain()
	res.DrainSeconds = time.Since(t1).Seconds()
	res.CPUSeconds = cpuSeconds() - cpu1
	res.ClickHouseCPUSeconds = pidCPUSeconds(o.ClickHousePID) - ch1
	res.LoadAvg = loadAvg()
	if o.CPUProfile != "" {
		pprof.StopCPUProfile()
	}
	close(stopTL)
	res.Timeline = <-tlDone
	if err != nil {
		return res, err
	}
	res.RecordsPerSec = float64(o.Events) / res.DrainSeconds
	end := gatherSteps(reg)
	res.Flushes = end.flushes - base.flushes
	if res.Flushes > 0 {
		res.FlushSecsAvg = (end.flushSum - base.flushSum) / float64(res.Flushes)
	}
	for k, v := range end.sum {
		if n := end.count[k] - base.count[k]; n > 0 {
			res.StepSecsAvg[k] = (v - base.sum[k]) / float64(n)
		}
	}
	cancel()
	if err := <-done; err != nil {
		return res, err
	}
	expected := new(big.Rat).SetFrac(quarters, big.NewInt(4))
	var rawSum, usageSum cogs.Decimal
	if err := conn.QueryRow(ctx, `SELECT count(), sum(q) FROM (SELECT any(quantity) AS q FROM metering_events
		GROUP BY tenant, hour, source, id)`).Scan(&res.Distinct, &rawSum); err != nil {
		return res, err
	}
	if err := conn.QueryRow(ctx, `SELECT sum(events), sum(quantity) FROM usage_hourly_current`).Scan(&res.UsageEvents, &usageSum); err != nil {
		return res, err
	}
	all := uint64(o.Prefill + o.Events)
	res.Exact = res.Distinct == all && res.UsageEvents == all && rawSum.Rat().Cmp(expected) == 0 && usageSum.Rat().Cmp(expected) == 0
	return res, nil
}

type stepSnapshot struct {
	flushes  uint64
	flushSum float64
	sum      map[string]float64
	count    map[string]uint64
}

func gatherSteps(reg *prometheus.Registry) stepSnapshot {
	s := stepSnapshot{sum: map[string]float64{}, count: map[string]uint64{}}
	mfs, err := reg.Gather()
	if err != nil {
		return s
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "cogs_flush_step_seconds":
			for _, m := range mf.GetMetric() {
				h := m.GetHistogram()
				s.sum[label(m, "step")] = h.GetSampleSum()
				s.count[label(m, "step")] = h.GetSampleCount()
			}
		case "cogs_flush_seconds":
			if len(mf.GetMetric()) > 0 {
				h := mf.GetMetric()[0].GetHistogram()
				s.flushes, s.flushSum = h.GetSampleCount(), h.GetSampleSum()
			}
		}
	}
	return s
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// PrintStream writes a human summary.
func PrintStream(w io.Writer, r StreamResult) {
	fmt.Fprintf(w, "stream: %d events of the current hour (after a prefill of %d), drained in %.2fs: %.0f records/s; CPU-s: this process %.1f (%.1f µs/event), ClickHouse %.1f; load average %s\n",
		r.Events, r.Prefill, r.DrainSeconds, r.RecordsPerSec, r.CPUSeconds, 1e6*r.CPUSeconds/float64(r.Events), r.ClickHouseCPUSeconds, r.LoadAvg)
	fmt.Fprintf(w, "%d flushes, %.0f ms per flush:", r.Flushes, r.FlushSecsAvg*1000)
	for _, s := range []string{"lookup", "events", "buckets_read", "buckets_write", "prices", "positions"} {
		fmt.Fprintf(w, " %s %.0f", s, r.StepSecsAvg[s]*1000)
	}
	fmt.Fprintln(w, " ms")
	for _, s := range r.Timeline {
		fmt.Fprintf(w, "  t=%5.1fs projected %8d  %7.0f/s  flushes %d  lookup %5.0f  events %5.0f  buckets %4.0f+%4.0f ms\n",
			s.T, s.Projected, s.PerSec, s.Flushes, s.StepMS["lookup"], s.StepMS["events"], s.StepMS["buckets_read"], s.StepMS["buckets_write"])
	}
	fmt.Fprintf(w, "ClickHouse: %d distinct events, usage_hourly %d events; exact: %v\n", r.Distinct, r.UsageEvents, r.Exact)
}

// pidCPUSeconds is utime+stime of a process (Linux; 0 when pid is 0 or unreadable).
func pidCPUSeconds(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100
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
