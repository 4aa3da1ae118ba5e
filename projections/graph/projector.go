package graph

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/events/wmkafka"
)

// ProjectorConfig configures the graph projector.
type ProjectorConfig struct {
	// Brokers are the Kafka seed brokers (required).
	Brokers []string
	// InstanceID names this process (required). Every instance keeps the
	// whole graph, so each run has its own consumer group
	// ("companyos-graph-<instance>-<run>"), positioned from the snapshot at
	// start and deleted at shutdown: the graph lives in memory, so offsets a
	// previous run committed describe state this process does not have.
	InstanceID string
	// SnapshotDir holds graph.snap (required).
	SnapshotDir string
	// SnapshotInterval between periodic snapshots (optional, default 1m;
	// one is also written on shutdown).
	SnapshotInterval time.Duration
	// Logger (optional) and Registerer (optional) for metrics.
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Validate reports every missing field.
func (c ProjectorConfig) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("graph projector: brokers required"))
	}
	if c.InstanceID == "" {
		errs = append(errs, errors.New("graph projector: instance id required"))
	}
	if c.SnapshotDir == "" {
		errs = append(errs, errors.New("graph projector: snapshot dir required"))
	}
	return errors.Join(errs...)
}

// Projector folds companyos.events.v1 into the in-memory graph of every
// tenant. It runs as a watermill Router handler over the project's franz-go
// subscriber; a receipt that cannot be applied goes to companyos.dlq.v1 with
// the reason, and the partition keeps moving.
type Projector struct {
	cfg     ProjectorConfig
	log     *slog.Logger
	tenants *Tenants

	// applyMu: handlers apply under RLock (partitions in parallel); a
	// snapshot takes Lock so that graph and offsets agree.
	applyMu sync.RWMutex
	offMu   sync.Mutex
	offsets map[int32]int64 // partition → next offset applied
	runID   string

	ready    atomic.Bool
	applied  prometheus.Counter
	poisoned prometheus.Counter
	snapDur  prometheus.Histogram
}

// NewProjector loads the latest snapshot (a missing or corrupt one means a
// full replay, with a warning) and returns a projector ready to Run.
func NewProjector(cfg ProjectorConfig) (*Projector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.SnapshotInterval <= 0 {
		cfg.SnapshotInterval = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	p := &Projector{cfg: cfg, log: cfg.Logger.With("component", "graph-projector"), tenants: NewTenants(), offsets: map[int32]int64{},
		runID: strconv.FormatInt(time.Now().UnixNano(), 36)}
	p.applied = prometheus.NewCounter(prometheus.CounterOpts{Name: "graph_projector_receipts_total", Help: "Receipts applied to the graph read model."})
	p.poisoned = prometheus.NewCounter(prometheus.CounterOpts{Name: "graph_projector_poison_total", Help: "Receipts the graph projector sent to the DLQ."})
	p.snapDur = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "graph_snapshot_seconds", Help: "Time to write a graph snapshot.",
		Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10}})
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(p.applied, p.poisoned, p.snapDur)
	}
	if err := os.MkdirAll(cfg.SnapshotDir, 0o700); err != nil {
		return nil, fmt.Errorf("graph projector: %w", err)
	}
	start := time.Now()
	f, err := os.Open(p.snapshotPath())
	switch {
	case errors.Is(err, os.ErrNotExist):
		p.log.Info("no graph snapshot; replaying the whole log")
	case err != nil:
		p.log.Warn("graph snapshot unreadable; replaying the whole log", "err", err)
	default:
		t, offs, rerr := ReadSnapshot(f)
		f.Close()
		if rerr != nil {
			p.log.Warn("graph snapshot corrupt; replaying the whole log", "err", rerr)
		} else {
			p.tenants, p.offsets = t, offs
			p.log.Info("graph snapshot loaded", "tenants", len(t.Names()), "offsets", offs, "took", time.Since(start).Round(time.Millisecond))
		}
	}
	return p, nil
}

// Tenants is the live read model.
func (p *Projector) Tenants() *Tenants { return p.tenants }

// Ready reports whether the projector is consuming.
func (p *Projector) Ready() bool { return p.ready.Load() }

func (p *Projector) snapshotPath() string { return filepath.Join(p.cfg.SnapshotDir, "graph.snap") }

func (p *Projector) group() string { return "companyos-graph-" + p.cfg.InstanceID + "-" + p.runID }

// Run consumes until ctx ends, then writes a final snapshot.
func (p *Projector) Run(ctx context.Context) error {
	if err := p.positionGroup(ctx); err != nil {
		return err
	}
	wlog := watermill.NopLogger{}
	sub, err := wmkafka.NewSubscriber(wmkafka.SubscriberConfig{
		Brokers: p.cfg.Brokers, ConsumerGroup: p.group(), Logger: wlog, MaxBufferedRecords: 5000,
		ClientOpts: []kgo.Opt{kgo.FetchIsolationLevel(kgo.ReadCommitted())},
	})
	if err != nil {
		return fmt.Errorf("graph projector: subscriber: %w", err)
	}
	pub, err := wmkafka.NewPublisher(wmkafka.PublisherConfig{Brokers: p.cfg.Brokers, Logger: wlog})
	if err != nil {
		return fmt.Errorf("graph projector: dlq publisher: %w", err)
	}
	defer pub.Close()
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 15 * time.Second}, wlog)
	if err != nil {
		return err
	}
	poison, err := middleware.PoisonQueueWithFilter(pub, events.TopicDLQ, func(err error) bool {
		return errors.Is(err, errPoison)
	})
	if err != nil {
		return err
	}
	router.AddMiddleware(middleware.Recoverer, poison)
	router.AddConsumerHandler("graph-projector", events.TopicEvents, sub, p.handle)

	snapCtx, stopSnaps := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(p.cfg.SnapshotInterval)
		defer t.Stop()
		for {
			select {
			case <-snapCtx.Done():
				return
			case <-t.C:
				if err := p.Snapshot(); err != nil {
					p.log.Error("graph snapshot", "err", err)
				}
			}
		}
	}()
	go func() {
		<-router.Running()
		p.ready.Store(true)
	}()
	err = router.Run(ctx)
	p.ready.Store(false)
	stopSnaps()
	wg.Wait()
	if serr := p.Snapshot(); serr != nil {
		p.log.Error("final graph snapshot", "err", serr)
	}
	p.deleteGroup()
	return err
}

// positionGroup makes the group resume exactly where the loaded snapshot
// ends (or at the start without one): the graph lives in memory, so offsets
// committed after the snapshot describe state this process no longer has.
func (p *Projector) positionGroup(ctx context.Context) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.cfg.Brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	starts, err := adm.ListStartOffsets(ctx, events.TopicEvents)
	if err != nil {
		return fmt.Errorf("graph projector: list offsets: %w", err)
	}
	p.offMu.Lock()
	offs := kadm.Offsets{}
	starts.Each(func(o kadm.ListedOffset) {
		at := o.Offset
		if n, ok := p.offsets[o.Partition]; ok && n > at {
			at = n
		}
		offs.AddOffset(events.TopicEvents, o.Partition, at, -1)
	})
	p.offMu.Unlock()
	resp, err := adm.CommitOffsets(ctx, p.group(), offs)
	if err != nil {
		return fmt.Errorf("graph projector: position group %s: %w", p.group(), err)
	}
	return resp.Error()
}

func (p *Projector) deleteGroup() {
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.cfg.Brokers...))
	if err != nil {
		return
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := kadm.NewClient(cl).DeleteGroup(ctx, p.group()); err != nil {
		p.log.Debug("delete run group", "group", p.group(), "err", err)
	}
}

var errPoison = errors.New("graph projector: poison receipt")

func (p *Projector) handle(msg *message.Message) error {
	part, _ := wmkafka.MessagePartitionFromCtx(msg.Context())
	off, _ := wmkafka.MessagePartitionOffsetFromCtx(msg.Context())
	p.applyMu.RLock()
	defer p.applyMu.RUnlock()
	if err := p.apply(msg.Payload); err != nil {
		// Where it came from travels with it to the DLQ (as record headers).
		msg.Metadata.Set("source_topic", events.TopicEvents)
		msg.Metadata.Set("source_partition", strconv.Itoa(int(part)))
		msg.Metadata.Set("source_offset", strconv.FormatInt(off, 10))
		p.poisoned.Inc()
		p.log.Error("receipt sent to DLQ", "partition", part, "offset", off, "err", err)
		p.recordOffset(part, off)
		return fmt.Errorf("%w: partition %d offset %d: %v", errPoison, part, off, err)
	}
	p.applied.Inc()
	p.recordOffset(part, off)
	return nil
}

func (p *Projector) recordOffset(part int32, off int64) {
	p.offMu.Lock()
	if off+1 > p.offsets[part] {
		p.offsets[part] = off + 1
	}
	p.offMu.Unlock()
}

func (p *Projector) apply(value []byte) error {
	env, err := events.ParseEnvelope(value)
	if err != nil {
		return err
	}
	r, err := events.ParseReceipt(env.Payload)
	if err != nil {
		return err
	}
	c, err := r.StateChange()
	if err != nil {
		return err
	}
	return p.tenants.Apply(r.Tenant, r.Seq, c)
}

// Snapshot writes graph.snap atomically (temp file + rename) with the
// offsets it covers.
func (p *Projector) Snapshot() error {
	start := time.Now()
	p.applyMu.Lock()
	defer p.applyMu.Unlock()
	p.offMu.Lock()
	offs := make(map[int32]int64, len(p.offsets))
	for k, v := range p.offsets {
		offs[k] = v
	}
	p.offMu.Unlock()
	tmp := p.snapshotPath() + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := WriteSnapshot(f, p.tenants, offs); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, p.snapshotPath()); err != nil {
		return err
	}
	p.snapDur.Observe(time.Since(start).Seconds())
	p.log.Debug("graph snapshot written", "offsets", offs, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// WaitApplied blocks until tenant has applied seq (read-your-writes), or ctx
// ends.
func (p *Projector) WaitApplied(ctx context.Context, tenant string, seq uint64) error {
	if p.tenants.AppliedSeq(tenant) >= seq {
		return nil
	}
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if p.tenants.AppliedSeq(tenant) >= seq {
				return nil
			}
		}
	}
}
