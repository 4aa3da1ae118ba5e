package wmkafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"
)

// ErrPublisherClosed is returned by Publish after Close.
var ErrPublisherClosed = errors.New("wmkafka: publisher closed")

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	// Brokers are the seed brokers, host:port (required).
	Brokers []string
	// Marshaler maps messages to records (optional, default DefaultMarshaler).
	Marshaler Marshaler
	// Key returns the partition key of a message (optional, default none:
	// unkeyed records are spread by franz-go's sticky partitioner). Messages
	// with the same key go to the same partition and keep their order; see
	// KeyFromMetadata.
	Key func(topic string, msg *message.Message) []byte
	// Logger (optional, default watermill.NopLogger).
	Logger watermill.LoggerAdapter
	// ClientOpts are extra franz-go options (optional), applied after the
	// publisher's own: SeedBrokers, RequiredAcks(AllISRAcks) with the
	// idempotent producer, ProducerLinger(0) (Publish is synchronous, so
	// lingering only adds latency) and the logger.
	ClientOpts []kgo.Opt
	// CloseTimeout bounds how long Close waits for buffered records to be
	// acknowledged (optional, default 30s).
	CloseTimeout time.Duration
}

func (c *PublisherConfig) setDefaults() {
	if c.Marshaler == nil {
		c.Marshaler = DefaultMarshaler{}
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	if c.CloseTimeout <= 0 {
		c.CloseTimeout = 30 * time.Second
	}
}

// Validate reports every missing or invalid field.
func (c PublisherConfig) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("wmkafka: publisher: brokers are required"))
	}
	if c.CloseTimeout < 0 {
		errs = append(errs, errors.New("wmkafka: publisher: close timeout must not be negative"))
	}
	return errors.Join(errs...)
}

// Publisher is a watermill message.Publisher that produces to Kafka.
// Publish returns only once Kafka has acknowledged every message (acks=all,
// idempotent producer), so a nil error means the messages are durable.
//
// Topics must exist (see Subscriber.SubscribeInitialize, or pass
// kgo.AllowAutoTopicCreation() in ClientOpts for a broker that auto-creates).
// While Kafka is unreachable, Publish keeps retrying until the message's
// Context is done; kgo.RecordDeliveryTimeout in ClientOpts bounds it.
type Publisher struct {
	cfg    PublisherConfig
	client *kgo.Client
	logger watermill.LoggerAdapter

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher validates cfg and creates a Publisher. It does not wait for a
// broker connection: the first Publish does.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()

	logger := cfg.Logger.With(watermill.LogFields{"component": "wmkafka.publisher"})
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()), // also the franz-go default; idempotence requires it
		kgo.ProducerLinger(0),
	}
	opts = append(opts, kgoLogOpts(logger)...)
	opts = append(opts, cfg.ClientOpts...)
	client, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("wmkafka: new publisher client: %w", err)
	}
	return &Publisher{
		cfg:    cfg,
		client: client,
		logger: logger,
	}, nil
}

// Publish produces msgs to topic, in order, and waits until all are
// acknowledged. Each record is produced with its message's Context: a context
// canceled before the record is sent fails that record. When some records
// fail, the error names them; the others may have been written, so a retry
// can duplicate (consumers are at-least-once anyway).
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if p.closed.Load() {
		return ErrPublisherClosed
	}
	if topic == "" {
		return errors.New("wmkafka: publish: empty topic")
	}
	if len(msgs) == 0 {
		return nil
	}

	recs := make([]*kgo.Record, len(msgs))
	for i, msg := range msgs {
		rec, err := p.cfg.Marshaler.Marshal(topic, msg)
		if err != nil {
			return fmt.Errorf("wmkafka: marshal message %s: %w", msg.UUID, err)
		}
		rec.Topic = topic
		if p.cfg.Key != nil {
			rec.Key = p.cfg.Key(topic, msg)
		}
		recs[i] = rec
	}

	errs := make([]error, len(recs))
	var wg sync.WaitGroup
	wg.Add(len(recs))
	for i, rec := range recs {
		// Produce keeps the call order per partition, and the idempotent
		// producer keeps it across retries.
		p.client.Produce(msgs[i].Context(), rec, func(_ *kgo.Record, err error) {
			if err != nil {
				errs[i] = fmt.Errorf("message %s: %w", msgs[i].UUID, err)
			}
			wg.Done()
		})
	}
	wg.Wait()

	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("wmkafka: publish to %s: %w", topic, err)
	}
	p.logger.Trace("published", watermill.LogFields{"topic": topic, "messages": len(msgs)})
	return nil
}

// Close waits (up to CloseTimeout) for records already handed to Kafka and
// closes the client. Publish calls after Close fail with ErrPublisherClosed.
// Close is idempotent.
func (p *Publisher) Close() error {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.CloseTimeout)
		defer cancel()
		if err := p.client.Flush(ctx); err != nil {
			p.closeErr = fmt.Errorf("wmkafka: close publisher: flush: %w", err)
		}
		p.client.Close()
	})
	return p.closeErr
}
