package wmkafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// ErrSubscriberClosed is returned by Subscribe and SubscribeInitialize after
// Close.
var ErrSubscriberClosed = errors.New("wmkafka: subscriber closed")

// NoSleep as SubscriberConfig.NackResendSleep redelivers a nacked message
// immediately.
const NoSleep time.Duration = -1

// SubscriberConfig configures a Subscriber.
type SubscriberConfig struct {
	// Brokers are the seed brokers, host:port (required).
	Brokers []string
	// ConsumerGroup is the Kafka consumer group (required). Every Subscribe
	// call joins it with its own client, so subscriptions of the same group
	// share a topic's partitions, and a new subscription resumes from the
	// group's committed offsets.
	ConsumerGroup string
	// Unmarshaler maps records to messages (optional, default
	// DefaultMarshaler).
	Unmarshaler Unmarshaler

	// InitializeTopics makes Subscribe create its topic when absent
	// (optional, default false). SubscribeInitialize always creates it.
	InitializeTopics bool
	// Partitions of a topic created by this subscriber (optional, default 1).
	Partitions int
	// ReplicationFactor of a topic created by this subscriber (optional,
	// default -1: the broker's default).
	ReplicationFactor int16

	// ResetOffset is where a partition starts when the group has no committed
	// offset for it (optional, default the start of the partition; the zero
	// kgo.Offset means the default).
	ResetOffset kgo.Offset
	// NackResendSleep is how long a partition waits before redelivering a
	// nacked message (optional, default 100ms; NoSleep for none).
	NackResendSleep time.Duration
	// ReconnectRetrySleep is the back-off after a fetch error and between
	// attempts to unmarshal a record (optional, default 1s). Reconnecting to
	// brokers is franz-go's job.
	ReconnectRetrySleep time.Duration
	// CommitInterval is how often acknowledged offsets are committed while
	// consuming (optional, default 1s). They are also committed when
	// partitions are revoked and when a subscription ends.
	CommitInterval time.Duration
	// MaxBufferedRecords is how many fetched records a partition may hold
	// before its fetching is paused (optional, default 1000). Fetching resumes
	// once half of them have been delivered.
	MaxBufferedRecords int
	// CloseTimeout bounds the final commit and the group leave when a
	// subscription ends (optional, default 30s).
	CloseTimeout time.Duration

	// Logger (optional, default watermill.NopLogger).
	Logger watermill.LoggerAdapter
	// ClientOpts are extra franz-go options (optional), applied after the
	// subscriber's own to every client it creates (the per-subscription
	// consumers and the admin client for topic creation): TLS, SASL, and
	// overrides of FetchMaxWait (default here 500ms), session/heartbeat
	// timings or the balancers. Options that take over consuming or offset
	// handling (ConsumerGroup, ConsumeTopics, autocommit, OnPartitions*
	// callbacks, BlockRebalanceOnPoll) must not be passed; the subscriber sets
	// its own after them.
	ClientOpts []kgo.Opt
}

func (c *SubscriberConfig) setDefaults() {
	if c.Unmarshaler == nil {
		c.Unmarshaler = DefaultMarshaler{}
	}
	if c.Partitions == 0 {
		c.Partitions = 1
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = -1
	}
	if c.ResetOffset == (kgo.Offset{}) {
		c.ResetOffset = kgo.NewOffset().AtStart()
	}
	switch {
	case c.NackResendSleep == 0:
		c.NackResendSleep = 100 * time.Millisecond
	case c.NackResendSleep < 0:
		c.NackResendSleep = 0
	}
	if c.ReconnectRetrySleep <= 0 {
		c.ReconnectRetrySleep = time.Second
	}
	if c.CommitInterval <= 0 {
		c.CommitInterval = time.Second
	}
	if c.MaxBufferedRecords <= 0 {
		c.MaxBufferedRecords = 1000
	}
	if c.CloseTimeout <= 0 {
		c.CloseTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every missing or invalid field.
func (c SubscriberConfig) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("wmkafka: subscriber: brokers are required"))
	}
	if c.ConsumerGroup == "" {
		errs = append(errs, errors.New("wmkafka: subscriber: consumer group is required"))
	}
	if c.Partitions < 0 {
		errs = append(errs, errors.New("wmkafka: subscriber: partitions must not be negative"))
	}
	if c.NackResendSleep < 0 && c.NackResendSleep != NoSleep {
		errs = append(errs, errors.New("wmkafka: subscriber: nack resend sleep must be positive, zero (default) or NoSleep"))
	}
	if c.MaxBufferedRecords < 0 {
		errs = append(errs, errors.New("wmkafka: subscriber: max buffered records must not be negative"))
	}
	return errors.Join(errs...)
}

// Subscriber is a watermill message.Subscriber on a Kafka consumer group.
//
// Each Subscribe call is a group member with its own franz-go client. For
// every partition it owns it delivers one message at a time and waits for
// its Ack before the next one; a Nack redelivers the same record after
// NackResendSleep. Only acknowledged offsets are committed. A message's
// Context carries its partition, offset, timestamp and key (see
// MessagePartitionFromCtx and friends) and is canceled once the message is
// acked or nacked, when its partition is revoked, when the Subscribe context
// is canceled and when the Subscriber is closed.
//
// Partitions are independent: those owned by one subscription deliver
// concurrently on its channel, so an unacked message holds back only its own
// partition. Order is per partition, i.e. per key (see PublisherConfig.Key).
// When a partition moves to another member, its unacked message is
// redelivered there (at-least-once).
type Subscriber struct {
	cfg    SubscriberConfig
	logger watermill.LoggerAdapter
	admin  *kgo.Client

	closeCtx   context.Context // canceled by Close: ends every subscription
	closeStart context.CancelFunc

	mu     sync.Mutex // guards closed and subscriptions.Add
	closed bool

	subscriptions sync.WaitGroup
	closeOnce     sync.Once
}

var (
	_ message.Subscriber           = (*Subscriber)(nil)
	_ message.SubscribeInitializer = (*Subscriber)(nil)
)

// NewSubscriber validates cfg and creates a Subscriber. It does not connect
// until the first Subscribe or SubscribeInitialize.
func NewSubscriber(cfg SubscriberConfig) (*Subscriber, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()

	logger := cfg.Logger.With(watermill.LogFields{
		"component":      "wmkafka.subscriber",
		"consumer_group": cfg.ConsumerGroup,
	})
	adminOpts := append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}, kgoLogOpts(logger)...)
	admin, err := kgo.NewClient(append(adminOpts, cfg.ClientOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("wmkafka: new subscriber admin client: %w", err)
	}
	closeCtx, closeStart := context.WithCancel(context.Background())
	return &Subscriber{
		cfg:        cfg,
		logger:     logger,
		admin:      admin,
		closeCtx:   closeCtx,
		closeStart: closeStart,
	}, nil
}

// Subscribe joins the consumer group for topic with a new client and returns
// its messages. The channel is closed once ctx is canceled or the Subscriber
// is closed, after acknowledged offsets have been committed.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if topic == "" {
		return nil, errors.New("wmkafka: subscribe: empty topic")
	}
	if s.cfg.InitializeTopics {
		if err := s.SubscribeInitialize(topic); err != nil {
			return nil, err
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrSubscriberClosed
	}

	sub := newSubscription(s, ctx, topic)
	opts := []kgo.Opt{
		kgo.SeedBrokers(s.cfg.Brokers...),
		kgo.FetchMaxWait(500 * time.Millisecond), // resumed partitions wait for the in-flight fetch
	}
	opts = append(opts, kgoLogOpts(sub.logger)...)
	opts = append(opts, s.cfg.ClientOpts...)
	// What is consumed and how offsets are handled is not overridable: only
	// acked records are marked, marks are committed periodically, on revoke
	// and at the end, and rebalances never run between a poll and the
	// hand-off of its records.
	opts = append(opts,
		kgo.ConsumerGroup(s.cfg.ConsumerGroup),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(s.cfg.ResetOffset),
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(s.cfg.CommitInterval),
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsAssigned(sub.onAssigned),
		kgo.OnPartitionsRevoked(sub.onRevoked),
		kgo.OnPartitionsLost(sub.onLost),
	)
	client, err := kgo.NewClient(opts...)
	if err != nil {
		sub.cancel()
		return nil, fmt.Errorf("wmkafka: subscribe to %s: new client: %w", topic, err)
	}
	sub.client = client

	s.subscriptions.Add(1)
	go func() {
		defer s.subscriptions.Done()
		sub.run()
	}()
	return sub.out, nil
}

// SubscribeInitialize creates topic with the configured partitions and
// replication factor; an existing topic is left as it is. The watermill
// Router does not call it; production topics are created by their owner
// before anything subscribes.
func (s *Subscriber) SubscribeInitialize(topic string) error {
	if s.closeCtx.Err() != nil {
		return ErrSubscriberClosed
	}
	ctx, cancel := context.WithTimeout(s.closeCtx, s.cfg.CloseTimeout)
	defer cancel()
	resp, err := kadm.NewClient(s.admin).CreateTopic(ctx, int32(s.cfg.Partitions), s.cfg.ReplicationFactor, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("wmkafka: create topic %s: %w", topic, err)
	}
	return nil
}

// Close ends every subscription (committing what was acknowledged, never what
// was not), closes their channels and waits for their goroutines. It is
// idempotent and safe to call concurrently.
func (s *Subscriber) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()

		s.closeStart()
		s.subscriptions.Wait()
		s.admin.Close()
	})
	return nil
}

// subscription is one Subscribe call: one group member, one poll loop and one
// worker per owned partition.
type subscription struct {
	s      *Subscriber
	topic  string
	logger watermill.LoggerAdapter
	client *kgo.Client

	ctx    context.Context // canceled by the Subscribe ctx and by Subscriber.Close
	cancel context.CancelFunc
	out    chan *message.Message

	mu      sync.Mutex // guards workers and stopped
	workers map[int32]*partitionWorker
	stopped bool // set at shutdown: no new workers
}

func newSubscription(s *Subscriber, ctx context.Context, topic string) *subscription {
	ctx, cancel := context.WithCancel(ctx)
	stopOnClose := context.AfterFunc(s.closeCtx, cancel)
	return &subscription{
		s:      s,
		topic:  topic,
		logger: s.logger.With(watermill.LogFields{"topic": topic}),
		ctx:    ctx,
		cancel: func() { stopOnClose(); cancel() },
		out:    make(chan *message.Message),
	}
}

func (sub *subscription) run() {
	defer close(sub.out)
	defer sub.cancel()
	sub.poll()
	sub.shutdown()
}

// poll hands fetched records to the partition workers. With
// BlockRebalanceOnPoll no revoke can run between PollFetches and
// AllowRebalance, so records never reach a worker of a partition this member
// no longer owns; the hand-off does not block, so rebalances are not held up.
func (sub *subscription) poll() {
	for {
		fetches := sub.client.PollFetches(sub.ctx)
		if sub.ctx.Err() != nil || fetches.IsClientClosed() {
			sub.client.AllowRebalance()
			return
		}
		failed := false
		fetches.EachError(func(topic string, partition int32, err error) {
			failed = true
			sub.logger.Error("fetch failed", err, watermill.LogFields{"partition": partition})
		})
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if len(p.Records) > 0 {
				sub.enqueue(p.Partition, p.Records)
			}
		})
		sub.client.AllowRebalance()
		if failed && !sleepCtx(sub.ctx, sub.s.cfg.ReconnectRetrySleep) {
			return
		}
	}
}

func (sub *subscription) enqueue(partition int32, recs []*kgo.Record) {
	sub.mu.Lock()
	w := sub.workers[partition]
	sub.mu.Unlock()
	if w == nil {
		// Assignment happens before fetching starts, so this is defensive:
		// dropping the records would skip them until the next rebalance.
		w = sub.startWorker(sub.client, partition)
		if w == nil {
			return // shutting down; nothing from this poll is marked
		}
	}
	w.push(recs)
}

func (sub *subscription) startWorker(client *kgo.Client, partition int32) *partitionWorker {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.stopped {
		return nil
	}
	if w := sub.workers[partition]; w != nil {
		return w
	}
	if sub.workers == nil {
		sub.workers = make(map[int32]*partitionWorker)
	}
	w := newPartitionWorker(sub, client, partition)
	sub.workers[partition] = w
	go w.run()
	return w
}

// stopWorkers stops the workers of partitions (all of them when all is set)
// and waits until they have exited, so that no Ack can mark an offset after
// it returns.
func (sub *subscription) stopWorkers(partitions []int32, all bool) {
	sub.mu.Lock()
	var stopping []*partitionWorker
	if all {
		sub.stopped = true
		for p, w := range sub.workers {
			stopping = append(stopping, w)
			delete(sub.workers, p)
		}
	} else {
		for _, p := range partitions {
			if w := sub.workers[p]; w != nil {
				stopping = append(stopping, w)
				delete(sub.workers, p)
			}
		}
	}
	sub.mu.Unlock()

	for _, w := range stopping {
		w.cancel()
	}
	for _, w := range stopping {
		<-w.done
		w.resumeFetching() // a later owner of this partition must not find it paused
	}
}

func (sub *subscription) onAssigned(_ context.Context, client *kgo.Client, assigned map[string][]int32) {
	for _, p := range assigned[sub.topic] {
		sub.startWorker(client, p)
	}
	sub.logger.Debug("partitions assigned", watermill.LogFields{"partitions": assigned[sub.topic]})
}

// onRevoked commits what was acknowledged on the partitions being given
// away (and on the others, which is harmless) once their workers have stopped.
func (sub *subscription) onRevoked(ctx context.Context, client *kgo.Client, revoked map[string][]int32) {
	sub.stopWorkers(revoked[sub.topic], false)
	if err := client.CommitMarkedOffsets(ctx); err != nil {
		sub.logger.Error("commit on revoke failed", err, watermill.LogFields{"partitions": revoked[sub.topic]})
	}
	sub.logger.Debug("partitions revoked", watermill.LogFields{"partitions": revoked[sub.topic]})
}

// onLost stops the workers of partitions that are already someone else's;
// committing for them would fail or, worse, rewind the new owner.
func (sub *subscription) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	sub.stopWorkers(lost[sub.topic], false)
	sub.logger.Info("partitions lost", watermill.LogFields{"partitions": lost[sub.topic]})
}

// shutdown runs after the poll loop has exited: it stops the workers (an Ack
// that raced with the stop is still marked), commits the marks and leaves
// the group. Nothing that was not acknowledged is committed.
func (sub *subscription) shutdown() {
	sub.stopWorkers(nil, true)

	ctx, cancel := context.WithTimeout(context.Background(), sub.s.cfg.CloseTimeout)
	defer cancel()
	if err := sub.client.CommitMarkedOffsets(ctx); err != nil {
		sub.logger.Error("final commit failed", err, nil)
	}
	if err := sub.client.LeaveGroupContext(ctx); err != nil {
		sub.logger.Error("leave group failed", err, nil)
	}
	sub.client.Close()
	sub.logger.Debug("subscription closed", nil)
}

// sleepCtx sleeps for d and reports whether ctx is still alive.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
