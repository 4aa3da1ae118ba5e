package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
)

// Waiter delivers processor replies (companyos.replies.v1) to the HTTP
// requests waiting for them. Every API instance reads every reply partition
// from the end it saw at start, read-committed, so it only ever answers a
// request with an outcome that is durable in Kafka.
type Waiter struct {
	cl  *kgo.Client
	log *slog.Logger

	mu      sync.Mutex
	pending map[string]chan Reply
}

// NewWaiter positions a consumer at the current end of the replies topic.
func NewWaiter(ctx context.Context, brokers []string, log *slog.Logger) (*Waiter, error) {
	if log == nil {
		log = slog.Default()
	}
	admCl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return nil, err
	}
	ends, err := kadm.NewClient(admCl).ListEndOffsets(ctx, events.TopicReplies)
	admCl.Close()
	if err != nil {
		return nil, fmt.Errorf("waiter: list end offsets: %w", err)
	}
	start := map[int32]kgo.Offset{}
	var lerr error
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			lerr = o.Err
		}
		start[o.Partition] = kgo.NewOffset().At(o.Offset)
	})
	if lerr != nil {
		return nil, fmt.Errorf("waiter: list end offsets: %w", lerr)
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{events.TopicReplies: start}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(200*time.Millisecond),
	)
	if err != nil {
		return nil, err
	}
	return &Waiter{cl: cl, log: log.With("component", "waiter"), pending: map[string]chan Reply{}}, nil
}

// Register announces a request before its command is produced.
func (w *Waiter) Register(requestID string) (<-chan Reply, func()) {
	ch := make(chan Reply, 1)
	w.mu.Lock()
	w.pending[requestID] = ch
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		delete(w.pending, requestID)
		w.mu.Unlock()
	}
}

// Run dispatches replies until ctx is done.
func (w *Waiter) Run(ctx context.Context) error {
	defer w.cl.Close()
	for {
		fs := w.cl.PollFetches(ctx)
		if fs.IsClientClosed() || ctx.Err() != nil {
			return nil
		}
		fs.EachError(func(t string, p int32, err error) {
			w.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
		})
		fs.EachRecord(func(rec *kgo.Record) {
			w.mu.Lock()
			ch, ok := w.pending[string(rec.Key)]
			if ok {
				delete(w.pending, string(rec.Key))
			}
			w.mu.Unlock()
			if !ok {
				return // another instance's request, or one that gave up
			}
			var r Reply
			if err := json.Unmarshal(rec.Value, &r); err != nil {
				w.log.Error("malformed reply", "offset", rec.Offset, "err", err)
				return
			}
			ch <- r
		})
	}
}
