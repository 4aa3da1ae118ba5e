package cogs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/events/wmkafka"
	"github.com/companyos/companyos/internal/keyfile"
)

// DLQ record headers set by the projector — the convention of package
// metering (metering.DeadLetter, read by `companyos dlq`) — next to
// watermill's reason_poisoned (the full error), topic_poisoned,
// handler_poisoned and subscriber_poisoned. The DLQ record keeps the
// original value and key (the tenant).
const (
	HeaderReason          = "reason"           // a Reason* code
	HeaderSourceTopic     = "source_topic"     // where the record was read
	HeaderSourcePartition = "source_partition" //
	HeaderSourceOffset    = "source_offset"    //
	// HeaderAttempt counts trips through the DLQ: 1 for a record seen for
	// the first time; a record re-driven by `companyos dlq replay` arrives
	// with its attempt already raised, and keeps it.
	HeaderAttempt = "attempt"
)

// panicAttempts is how often a record may make the handler panic before it
// goes to the DLQ (a panic may be transient; a deterministic one must not
// stall its partition forever).
const panicAttempts = 3

// Config configures the cogs projector.
type Config struct {
	// Brokers are the Kafka seed brokers (required).
	Brokers []string
	// Conn is the ClickHouse connection (native protocol) to a database
	// migrated with Migrate (required).
	Conn driver.Conn
	// InstanceID names this process in its consumer groups (optional,
	// default "cogs"). The projector's positions live in ClickHouse, so every
	// run uses fresh groups "companyos-cogs-<instance>-<run>-metering" and
	// "…-prices", positioned from ClickHouse at start and deleted at
	// shutdown. Run one projector per ClickHouse database.
	InstanceID string
	// Rules normalise tags, meters and units (optional, default
	// DefaultRules(): schemas/clickhouse/tag_rules.yaml).
	Rules *Rules
	// ReceiptKeys, when set, must verify every allowed pricing.set receipt;
	// one that does not goes to the DLQ (optional, default: not checked —
	// the ledger verifies the whole log).
	ReceiptKeys *keyfile.KeySet
	// BatchSize is how many buffered events start a flush (optional,
	// default 10000).
	BatchSize int
	// FlushInterval is the longest time an event waits in the buffer
	// (optional, default 1s).
	FlushInterval time.Duration
	// MaxBuffered bounds the events in memory while a flush runs or is
	// retried; handlers then wait, stalling their partitions (optional,
	// default 4 × BatchSize).
	MaxBuffered int
	// FlushTimeout bounds one flush attempt and the final flush at shutdown
	// (optional, default 30s).
	FlushTimeout time.Duration
	// MemoIdle is how long the projector keeps in memory the fingerprints
	// of the stored events of a (tenant, hour) after it last projected an
	// event of that hour; the next one reads them again from ClickHouse
	// (optional, default 15m). They spare every flush a look-up of its
	// events in ClickHouse (keyindex.go), at 11 to 21 bytes per event held.
	MemoIdle time.Duration
	// MemoMaxEvents bounds those fingerprints: past it, the hours the
	// latest flush did not touch are dropped (optional, default 1<<25,
	// about 0.5 GB). The hours a flush touches are always held.
	MemoMaxEvents int
	// AnomalyInterval is how often anomalies_day.sql runs to refresh the
	// cogs_anomalies gauge (optional, default 5m; negative disables; no
	// effect without Registerer).
	AnomalyInterval time.Duration
	// AnomalyLookback: anomalous days that ended within this window are
	// exported (optional, default 48h).
	AnomalyLookback time.Duration
	// Logger (optional, default slog.Default()).
	Logger *slog.Logger
	// Registerer receives the metrics (optional: none).
	Registerer prometheus.Registerer
	// ClientOpts are extra franz-go options for every Kafka client
	// (optional): TLS, SASL.
	ClientOpts []kgo.Opt
}

// Validate reports every missing or invalid field.
func (c Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("cogs projector: brokers required"))
	}
	if c.Conn == nil {
		errs = append(errs, errors.New("cogs projector: ClickHouse connection required"))
	}
	if c.BatchSize < 0 {
		errs = append(errs, errors.New("cogs projector: batch size must not be negative"))
	}
	if c.MaxBuffered < 0 || c.MaxBuffered > 0 && c.MaxBuffered < c.BatchSize {
		errs = append(errs, errors.New("cogs projector: max buffered must be at least the batch size"))
	}
	if c.FlushInterval < 0 || c.FlushTimeout < 0 || c.AnomalyLookback < 0 || c.MemoIdle < 0 || c.MemoMaxEvents < 0 {
		errs = append(errs, errors.New("cogs projector: flush interval, flush timeout, memo idle time and size and anomaly lookback must not be negative"))
	}
	return errors.Join(errs...)
}

func (c *Config) setDefaults() error {
	if c.InstanceID == "" {
		c.InstanceID = "cogs"
	}
	if c.Rules == nil {
		r, err := DefaultRules()
		if err != nil {
			return err
		}
		c.Rules = r
	}
	if c.BatchSize == 0 {
		c.BatchSize = 10000
	}
	if c.MaxBuffered == 0 {
		c.MaxBuffered = 4 * c.BatchSize
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = time.Second
	}
	if c.FlushTimeout == 0 {
		c.FlushTimeout = 30 * time.Second
	}
	if c.MemoIdle == 0 {
		c.MemoIdle = 15 * time.Minute
	}
	if c.MemoMaxEvents == 0 {
		c.MemoMaxEvents = 1 << 25
	}
	if c.AnomalyInterval == 0 {
		c.AnomalyInterval = 5 * time.Minute
	}
	if c.AnomalyLookback == 0 {
		c.AnomalyLookback = 48 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// ErrClusterMismatch is returned by Run when the stored positions were
// written against another Kafka cluster.
var ErrClusterMismatch = errors.New("cogs: Kafka cluster mismatch")

// errCrash marks a flush failure that must stop Run at once, without the
// final flush (test hooks use it to simulate a crash).
var errCrash = errors.New("cogs: projector stopped")

// Projector projects metering.events.v1 (usage) and the pricing.set
// receipts of companyos.events.v1 (the price catalog) into ClickHouse.
//
// Both topics are consumed by watermill Router handlers over wmkafka. A
// handler parses and normalises its record, adds the row to an in-memory
// batch and acks; a flusher writes the batch by size or time: new events,
// hourly usage, prices, then the positions. The positions — per partition,
// the next offset that is neither in ClickHouse nor in the DLQ — are the
// projector's real offsets: they live in ClickHouse and are written only
// after the rows, and each run's consumer groups start from them. The Kafka
// commits of those throwaway groups mean nothing. A crash anywhere replays
// from the stored positions, and the writes are idempotent (doc.go), so
// nothing is lost or counted twice.
//
// A record that can never be projected (bad JSON, invalid decimal, unknown
// meter or unit, invalid price) goes to companyos.dlq.v1 through watermill's
// PoisonQueue with the Header* headers; its partition keeps moving.
type Projector struct {
	cfg   Config
	log   *slog.Logger
	store *store
	m     *metrics
	runID string
	buf   *buffer

	parser  *eventParser
	fpSQL   string      // fingerprintSQL (tests weaken it, with parser.fp)
	keys    *keyIndex   // used by the flusher only
	buckets *bucketMemo // used by the flusher only

	clusterID string
	ready     atomic.Bool

	mu       sync.Mutex
	attempts map[msgPos]int
	poisoned map[msgPos]string // reason, between the DLQ decision and the ack

	// test hooks, called inside a flush; an error simulates a crash there.
	afterEvents     func() error // after metering_events, before usage_hourly
	beforePositions func() error // after every row, before the positions
	// afterWrite, called after metering_events ("events") and usage_hourly
	// ("buckets") were written, can report a failure of a write that
	// happened (as a lost acknowledgement would); the flush is retried.
	afterWrite func(step string) error
}

type msgPos struct {
	topic     string
	partition int32
	offset    int64
}

// NewProjector validates cfg and registers the metrics.
func NewProjector(cfg Config) (*Projector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Projector{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "cogs-projector"),
		store:    &store{conn: cfg.Conn},
		m:        m,
		runID:    strconv.FormatInt(time.Now().UnixNano(), 36),
		buf:      newBuffer(cfg.BatchSize, cfg.MaxBuffered),
		parser:   newEventParser(cfg.Rules),
		fpSQL:    fingerprintSQL,
		keys:     newKeyIndex(cfg.MemoIdle, cfg.MemoMaxEvents, fingerprintSQL),
		buckets:  newBucketMemo(),
		attempts: map[msgPos]int{},
		poisoned: map[msgPos]string{},
	}, nil
}

// Ready reports whether the projector is consuming.
func (p *Projector) Ready() bool { return p.ready.Load() }

func (p *Projector) group(topic string) string {
	suffix := "metering"
	if topic == events.TopicEvents {
		suffix = "prices"
	}
	return "companyos-cogs-" + p.cfg.InstanceID + "-" + p.runID + "-" + suffix
}

func (p *Projector) kafkaClient() (*kgo.Client, error) {
	return kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(p.cfg.Brokers...)}, p.cfg.ClientOpts...)...)
}

// Run consumes until ctx ends, flushes what it holds and returns nil, or
// returns the error that stopped it. Call it from one goroutine at a time;
// after an error it may be called again and resumes from the positions
// stored in ClickHouse (nothing held in memory is reused).
func (p *Projector) Run(ctx context.Context) (err error) {
	defer func() {
		if err != nil && ctx.Err() != nil && !errors.Is(err, errCrash) {
			err = nil // stopped while starting: not a failure
		}
	}()
	if err := CheckMigrated(ctx, p.cfg.Conn); err != nil {
		return err
	}
	p.runID = strconv.FormatInt(time.Now().UnixNano(), 36)
	p.buf = newBuffer(p.cfg.BatchSize, p.cfg.MaxBuffered)
	p.keys = newKeyIndex(p.cfg.MemoIdle, p.cfg.MemoMaxEvents, p.fpSQL)
	p.buckets = newBucketMemo()
	p.mu.Lock()
	p.attempts, p.poisoned = map[msgPos]int{}, map[msgPos]string{}
	p.mu.Unlock()
	defer p.deleteGroups()
	if err := p.positionGroups(ctx); err != nil {
		return err
	}

	wlog := watermill.NopLogger{}
	subOpts := append([]kgo.Opt{kgo.FetchIsolationLevel(kgo.ReadCommitted())}, p.cfg.ClientOpts...)
	newSub := func(topic string) (*wmkafka.Subscriber, error) {
		return wmkafka.NewSubscriber(wmkafka.SubscriberConfig{
			Brokers: p.cfg.Brokers, ConsumerGroup: p.group(topic), Logger: wlog,
			MaxBufferedRecords: 5000, NackResendSleep: 500 * time.Millisecond, ClientOpts: subOpts,
		})
	}
	// The router closes the subscribers when it stops; the deferred Close
	// (idempotent) covers returning before it runs.
	meterSub, err := newSub(events.TopicMetering)
	if err != nil {
		return fmt.Errorf("cogs projector: subscriber: %w", err)
	}
	defer meterSub.Close()
	priceSub, err := newSub(events.TopicEvents)
	if err != nil {
		return fmt.Errorf("cogs projector: subscriber: %w", err)
	}
	defer priceSub.Close()
	dlq, err := wmkafka.NewPublisher(wmkafka.PublisherConfig{Brokers: p.cfg.Brokers, Logger: wlog,
		Key: sourceKey, ClientOpts: p.cfg.ClientOpts})
	if err != nil {
		return fmt.Errorf("cogs projector: dlq publisher: %w", err)
	}
	defer dlq.Close()
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 30 * time.Second}, wlog)
	if err != nil {
		return err
	}
	poisonMW, err := middleware.PoisonQueueWithFilter(dlq, events.TopicDLQ, func(err error) bool { return errors.Is(err, errPoison) })
	if err != nil {
		return err
	}
	mh := router.AddConsumerHandler("cogs-metering", events.TopicMetering, meterSub, p.handleMetering)
	warm := newWarmPool(max(4, 2*runtime.GOMAXPROCS(0)))
	defer warm.close() // after the router stopped: no handler runs
	mh.AddMiddleware(warm.middleware, p.track, poisonMW, p.guard)
	ph := router.AddConsumerHandler("cogs-prices", events.TopicEvents, priceSub, p.handlePrices)
	ph.AddMiddleware(warm.middleware, p.track, poisonMW, p.guard)

	rctx, stopRouter := context.WithCancel(ctx)
	defer stopRouter()
	stopFlusher := make(chan struct{})
	flushed := make(chan error, 1)
	go func() { flushed <- p.flushLoop(stopFlusher, stopRouter) }()
	var wg sync.WaitGroup
	if p.cfg.Registerer != nil && p.cfg.AnomalyInterval > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.anomalyLoop(rctx)
		}()
	}
	go func() {
		select {
		case <-router.Running():
			p.ready.Store(true)
			p.log.Info("cogs projector consuming", "cluster", p.clusterID)
		case <-rctx.Done():
		}
	}()
	rerr := router.Run(rctx)
	p.ready.Store(false)
	close(stopFlusher)
	ferr := <-flushed
	stopRouter()
	wg.Wait()
	if ferr != nil {
		return ferr
	}
	if rerr != nil && ctx.Err() == nil {
		return fmt.Errorf("cogs projector: router: %w", rerr)
	}
	return nil
}

// positionGroups starts this run's groups at the stored positions (or at
// the start of the log), after checking that they belong to this cluster
// and that no record below them was deleted unread.
func (p *Projector) positionGroups(ctx context.Context) error {
	cl, err := p.kafkaClient()
	if err != nil {
		return fmt.Errorf("cogs projector: kafka client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	md, err := adm.Metadata(ctx)
	if err != nil {
		return fmt.Errorf("cogs projector: kafka metadata: %w", err)
	}
	p.clusterID = md.Cluster
	stored, clusters, err := p.store.positions(ctx)
	if err != nil {
		return err
	}
	for c := range clusters {
		if c != p.clusterID {
			return fmt.Errorf("%w: positions in ClickHouse belong to Kafka cluster %q, connected to %q: refusing to start; "+
				"point the projector at the original cluster, or rebuild COGS from this cluster's log into an empty database",
				ErrClusterMismatch, c, p.clusterID)
		}
	}
	for _, topic := range []string{events.TopicMetering, events.TopicEvents} {
		starts, err := adm.ListStartOffsets(ctx, topic)
		if err != nil {
			return fmt.Errorf("cogs projector: list start offsets of %s: %w", topic, err)
		}
		offs := kadm.Offsets{}
		var lerr error
		starts.Each(func(o kadm.ListedOffset) {
			if o.Err != nil {
				lerr = fmt.Errorf("cogs projector: start offset of %s/%d: %w", topic, o.Partition, o.Err)
				return
			}
			at := o.Offset
			if s, ok := stored[topicPartition{topic, o.Partition}]; ok {
				if s < o.Offset {
					lerr = fmt.Errorf("cogs projector: %s/%d: stored position %d is below the log start %d: records were deleted unread",
						topic, o.Partition, s, o.Offset)
					return
				}
				at = s
			}
			offs.AddOffset(topic, o.Partition, at, -1)
		})
		if lerr != nil {
			return lerr
		}
		if len(offs) == 0 {
			return fmt.Errorf("cogs projector: topic %s does not exist (create the topics first)", topic)
		}
		resp, err := adm.CommitOffsets(ctx, p.group(topic), offs)
		if err == nil {
			err = resp.Error()
		}
		if err != nil {
			return fmt.Errorf("cogs projector: position group %s: %w", p.group(topic), err)
		}
	}
	return nil
}

func (p *Projector) deleteGroups() {
	cl, err := p.kafkaClient()
	if err != nil {
		return
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, topic := range []string{events.TopicMetering, events.TopicEvents} {
		if _, err := kadm.NewClient(cl).DeleteGroup(ctx, p.group(topic)); err != nil {
			p.log.Debug("delete run group", "group", p.group(topic), "err", err)
		}
	}
}

// sourceKey keys a DLQ record like the record it came from (the message is
// the consumed one, so its context knows the record).
func sourceKey(_ string, msg *message.Message) []byte {
	k, _ := wmkafka.MessageKeyFromCtx(msg.Context())
	return k
}

// recordCtxKey carries a message's recordOf, set by track (the outermost
// middleware): the record's position and key are then one context look-up
// away instead of one walk through the router's context chain each.
type recordCtxKey struct{}

type recordOf struct {
	pos msgPos
	key []byte
}

func readRecord(msg *message.Message) recordOf {
	ctx := msg.Context()
	if r, ok := ctx.Value(recordCtxKey{}).(*recordOf); ok {
		return *r
	}
	topic, _ := wmkafka.MessageTopicFromCtx(ctx)
	part, _ := wmkafka.MessagePartitionFromCtx(ctx)
	off, _ := wmkafka.MessagePartitionOffsetFromCtx(ctx)
	key, _ := wmkafka.MessageKeyFromCtx(ctx)
	return recordOf{pos: msgPos{topic: topic, partition: part, offset: off}, key: key}
}

func posOf(msg *message.Message) msgPos { return readRecord(msg).pos }

func (p *Projector) handleMetering(msg *message.Message) error {
	rec := readRecord(msg)
	mp := rec.pos
	row, err := p.parser.parse(msg.Payload, rec.key, position{mp.partition, mp.offset})
	if err != nil {
		return err
	}
	return p.buf.add(msg.Context(), row, nil)
}

func (p *Projector) handlePrices(msg *message.Message) error {
	mp := posOf(msg)
	row, err := parsePriceReceipt(p.cfg.Rules, p.cfg.ReceiptKeys, msg.Payload, position{mp.partition, mp.offset})
	if err != nil || row == nil {
		return err
	}
	return p.buf.add(msg.Context(), nil, row)
}

// guard is the innermost middleware: it counts deliveries in this run, turns
// a panic into an error (a poison one after panicAttempts deliveries), and
// labels a poison message with the DLQ headers before PoisonQueue publishes
// it.
func (p *Projector) guard(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) (out []*message.Message, err error) {
		mp := posOf(msg)
		p.mu.Lock()
		p.attempts[mp]++
		n := p.attempts[mp]
		p.mu.Unlock()
		defer func() {
			if r := recover(); r != nil {
				p.log.Error("cogs handler panicked", "topic", mp.topic, "partition", mp.partition, "offset", mp.offset, "attempt", n, "panic", r)
				if n >= panicAttempts {
					err = poison(ReasonPanic, "%v", r)
				} else {
					err = fmt.Errorf("cogs: handler panicked: %v", r)
				}
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			if err != nil && !errors.Is(err, errPoison) {
				return // redelivered: keep counting
			}
			delete(p.attempts, mp)
			if reason := reasonOf(err); reason != "" {
				msg.Metadata.Set(HeaderReason, reason)
				msg.Metadata.Set(HeaderSourceTopic, mp.topic)
				msg.Metadata.Set(HeaderSourcePartition, strconv.Itoa(int(mp.partition)))
				msg.Metadata.Set(HeaderSourceOffset, strconv.FormatInt(mp.offset, 10))
				if msg.Metadata.Get(HeaderAttempt) == "" {
					msg.Metadata.Set(HeaderAttempt, "1")
				}
				p.poisoned[mp] = reason
			}
		}()
		return h(msg)
	}
}

// track is the outermost middleware but warm's: once a message is handled (buffered,
// ignored, or safely in the DLQ) it advances the partition's position in
// the current batch, just before the router acks it.
func (p *Projector) track(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		rec := readRecord(msg)
		msg.SetContext(context.WithValue(msg.Context(), recordCtxKey{}, &rec))
		out, err := h(msg)
		mp := rec.pos
		p.mu.Lock()
		reason, dlqd := p.poisoned[mp]
		delete(p.poisoned, mp)
		p.mu.Unlock()
		if err != nil {
			return out, err // nacked: redelivered, the position stays
		}
		if dlqd {
			p.log.Warn("record sent to the DLQ", "topic", mp.topic, "partition", mp.partition, "offset", mp.offset, "reason", reason)
			if mp.topic == events.TopicMetering {
				p.m.events.WithLabelValues(ResultDLQ).Inc()
				p.m.dlq.Inc()
			} else {
				p.m.pricesDLQ.Inc()
			}
		}
		p.buf.mark(topicPartition{mp.topic, mp.partition}, mp.offset+1)
		return out, nil
	}
}

// flushLoop writes batches until stop is closed, then writes what is left.
// A failed flush is retried with back-off (the batch is kept, the buffer
// fills and stalls the handlers); a crash-marked one stops the router.
func (p *Projector) flushLoop(stop <-chan struct{}, stopRouter context.CancelFunc) error {
	t := time.NewTicker(p.cfg.FlushInterval)
	defer t.Stop()
	var pending *batch
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-stop:
			return p.finalFlush(pending)
		case <-t.C:
		case <-p.buf.kick:
		}
		if pending == nil {
			pending = p.buf.take()
		}
		if pending.empty() {
			pending = nil
			continue
		}
		if err := p.flush(pending); err != nil {
			if errors.Is(err, errCrash) {
				stopRouter()
				return err
			}
			p.m.flushErrors.Inc()
			p.log.Error("cogs flush failed; retrying", "events", len(pending.rows), "prices", len(pending.prices), "err", err, "retry_in", backoff)
			select {
			case <-stop:
				return p.finalFlush(pending)
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		pending = nil
	}
}

// finalFlush writes the pending batch and the rest of the buffer, retrying
// until FlushTimeout. What it cannot write stays below the stored positions
// and is replayed by the next run.
func (p *Projector) finalFlush(pending *batch) error {
	deadline := time.Now().Add(p.cfg.FlushTimeout)
	rest := p.buf.take()
	var err error
	for _, b := range []*batch{pending, rest} {
		if b == nil || b.empty() {
			continue
		}
		for {
			if err = p.flush(b); err == nil || errors.Is(err, errCrash) || time.Now().After(deadline) {
				break
			}
			p.m.flushErrors.Inc()
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("cogs projector: final flush (%d events will be replayed): %w", len(b.rows), err)
		}
	}
	return nil
}

// flush writes one batch. See doc.go for why every step is idempotent.
func (p *Projector) flush(b *batch) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.FlushTimeout)
	defer cancel()
	st, err := p.write(ctx, b)
	if err != nil {
		return err
	}
	p.m.flushSecs.Observe(time.Since(start).Seconds())
	for _, s := range st.steps {
		p.m.stepSecs.WithLabelValues(s.name).Observe(s.d.Seconds())
	}
	p.m.events.WithLabelValues(ResultAccepted).Add(float64(st.accepted))
	p.m.events.WithLabelValues(ResultDuplicate).Add(float64(st.duplicates))
	p.m.unattributed.WithLabelValues("tenant").Add(float64(st.unattributedTenant))
	p.m.unattributed.WithLabelValues("service").Add(float64(st.unattributedService))
	p.m.prices.Add(float64(len(b.prices)))
	p.m.keysLookedUp.Add(float64(st.lookedUp))
	p.keys.evict(time.Now())
	p.buckets.evict(time.Now())
	p.m.keyIndex.Set(float64(p.keys.size()))
	p.log.Debug("cogs flush", "events", len(b.rows), "accepted", st.accepted, "duplicates", st.duplicates,
		"buckets", st.buckets, "prices", len(b.prices), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

type writeStats struct {
	accepted, duplicates                    int
	lookedUp                                int // keys looked up in ClickHouse
	unattributedTenant, unattributedService int
	buckets                                 int
	steps                                   []stepTime
}

type stepTime struct {
	name string
	d    time.Duration
}

// step records how long the step that ends now took.
func (st *writeStats) step(name string, since *time.Time) {
	now := time.Now()
	st.steps = append(st.steps, stepTime{name, now.Sub(*since)})
	*since = now
}

// write applies a batch: (1) decide which events count — an event counts
// when no other occurrence of its key is stored and it is the earliest
// occurrence in the batch; (2) insert the new ones into metering_events;
// (3) add every counted event at or above its bucket's through_offset to
// usage_hourly; (4) insert prices; (5) store the positions.
func (p *Projector) write(ctx context.Context, b *batch) (writeStats, error) {
	var st writeStats
	mark := time.Now()
	if len(b.rows) > 0 {
		byKey := make(map[eventKey][]*eventRow, len(b.rows))
		keys := make([]eventKey, 0, len(b.rows))
		fps := make([]uint64, 0, len(b.rows))
		for _, r := range b.rows {
			if _, ok := byKey[r.key]; !ok {
				keys = append(keys, r.key)
				fps = append(fps, r.fp)
			}
			byKey[r.key] = append(byKey[r.key], r)
		}
		// Only keys the index cannot rule out are looked up in ClickHouse.
		maybe, err := p.keys.candidates(ctx, p.store, keys, fps, time.Now())
		if err != nil {
			return st, err
		}
		stored, err := p.store.storedOccurrences(ctx, maybe)
		if err != nil {
			return st, err
		}
		st.lookedUp = len(maybe)
		st.step("lookup", &mark)
		var counted, fresh []*eventRow
		for _, k := range keys {
			rs := byKey[k]
			win, isStored := position{}, false
			for _, sp := range stored[k] {
				if !isStored || sp.less(win) {
					win, isStored = sp, true
				}
			}
			if !isStored {
				win = rs[0].pos
				for _, r := range rs[1:] {
					if r.pos.less(win) {
						win = r.pos
					}
				}
			}
			seen := false
			for _, r := range rs {
				switch {
				case r.pos != win:
					st.duplicates++
				case seen: // the same record twice in one batch: count it once
				default:
					seen = true
					counted = append(counted, r)
					if !isStored {
						fresh = append(fresh, r)
					}
				}
			}
		}
		st.accepted = len(counted)
		for _, r := range fresh {
			if r.key.tenant == Unattributed {
				st.unattributedTenant++
			}
			if r.tags.Service == Unattributed {
				st.unattributedService++
			}
		}
		err = p.store.insertEvents(ctx, fresh)
		if err == nil && p.afterWrite != nil {
			err = p.afterWrite("events")
		}
		if err != nil {
			p.keys.forget(fresh) // stored or not: the next attempt reads them back
			return st, err
		}
		p.keys.add(fresh)
		st.step("events", &mark)
		if p.afterEvents != nil {
			if err := p.afterEvents(); err != nil {
				return st, fmt.Errorf("%w: %v", errCrash, err)
			}
		}
		n, err := p.addToBuckets(ctx, b, counted, &st, &mark)
		if err != nil {
			return st, err
		}
		st.buckets = n
	}
	if err := p.store.insertPrices(ctx, b.prices); err != nil {
		return st, err
	}
	st.step("prices", &mark)
	if p.beforePositions != nil {
		if err := p.beforePositions(); err != nil {
			return st, fmt.Errorf("%w: %v", errCrash, err)
		}
	}
	if err := p.store.insertPositions(ctx, b.next, p.clusterID); err != nil {
		return st, err
	}
	st.step("positions", &mark)
	return st, nil
}

// addToBuckets adds counted events to their hourly buckets, skipping those
// a bucket already includes (offset below its through_offset), and writes
// the changed buckets with through_offset = how far this batch handled the
// partition.
func (p *Projector) addToBuckets(ctx context.Context, b *batch, counted []*eventRow, st *writeStats, mark *time.Time) (int, error) {
	through := map[int32]int64{}
	for tp, n := range b.next {
		if tp.topic == events.TopicMetering {
			through[tp.partition] = n
		}
	}
	for _, r := range b.rows {
		through[r.pos.partition] = max(through[r.pos.partition], r.pos.offset+1)
	}
	byBucket := map[bucketKey][]*eventRow{}
	for _, r := range counted {
		k := bucketKey{tenant: r.key.tenant, hour: r.hour.Unix(), service: r.tags.Service, region: r.tags.Region,
			team: r.tags.Team, meter: r.meter, unit: r.unit, partition: r.pos.partition}
		byBucket[k] = append(byBucket[k], r)
	}
	// The current row of each bucket: from memory if held, else from ClickHouse.
	now := time.Now()
	current := make(map[bucketKey]bucketState, len(byBucket))
	missing := map[bucketKey]bool{}
	for k := range byBucket {
		if cur, ok := p.buckets.get(k); ok {
			current[k] = cur
		} else {
			missing[k] = true
		}
	}
	if len(missing) > 0 {
		read, err := p.store.buckets(ctx, missing)
		if err != nil {
			return 0, err
		}
		for k := range missing {
			current[k] = read[k]
			p.buckets.put(k, read[k], now)
		}
	}
	st.step("buckets_read", mark)
	updates := map[bucketKey]bucketState{}
	for k, rs := range byBucket {
		cur := current[k]
		q := new(big.Int)
		if cur.quantity != nil {
			q.Set(cur.quantity)
		}
		events, changed := cur.events, false
		for _, r := range rs {
			if r.pos.offset < cur.through {
				continue // counted by an earlier (possibly crashed) flush
			}
			q.Add(q, r.quantity)
			events++
			changed = true
		}
		if changed {
			updates[k] = bucketState{quantity: q, events: events, through: through[k.partition]}
		}
	}
	err := p.store.insertBuckets(ctx, updates)
	if err == nil && p.afterWrite != nil {
		err = p.afterWrite("buckets")
	}
	if err != nil {
		p.buckets.forget(updates) // written or not: the next attempt reads them back
		return 0, err
	}
	for k, s := range updates {
		p.buckets.put(k, s, now)
	}
	st.step("buckets_write", mark)
	return len(updates), nil
}

// anomalyLoop refreshes cogs_anomalies from anomalies_day.sql.
func (p *Projector) anomalyLoop(ctx context.Context) {
	t := time.NewTicker(p.cfg.AnomalyInterval)
	defer t.Stop()
	for {
		if _, err := p.CheckAnomalies(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("cogs anomaly check", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// CheckAnomalies runs anomalies_day.sql and sets cogs_anomalies{tenant,
// direction} to the number of anomalous days that ended within
// AnomalyLookback; it returns every anomaly the query reports.
func (p *Projector) CheckAnomalies(ctx context.Context) ([]Anomaly, error) {
	as, err := DayAnomalies(ctx, p.cfg.Conn)
	if err != nil {
		p.m.anomalyRuns.WithLabelValues("error").Inc()
		return nil, err
	}
	type td struct{ tenant, direction string }
	counts := map[td]int{}
	cutoff := time.Now().Add(-p.cfg.AnomalyLookback)
	for _, a := range as {
		if a.At.Add(24 * time.Hour).After(cutoff) {
			counts[td{a.Tenant, a.Direction}]++
		}
	}
	p.m.anomalies.Reset()
	keys := make([]td, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].tenant < keys[j].tenant })
	for _, k := range keys {
		p.m.anomalies.WithLabelValues(k.tenant, k.direction).Set(float64(counts[k]))
	}
	p.m.anomalyRuns.WithLabelValues("ok").Inc()
	p.m.anomalyLast.SetToCurrentTime()
	return as, nil
}
