package wmkafka

import (
	"context"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/twmb/franz-go/pkg/kgo"
)

// partitionWorker delivers the records of one owned partition in order, one
// at a time, and marks a record for commit only after its message is acked.
type partitionWorker struct {
	sub       *subscription
	client    *kgo.Client
	partition int32
	logger    watermill.LoggerAdapter

	ctx    context.Context // canceled when the partition is revoked or lost, or the subscription ends
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns

	wake chan struct{} // signals records pushed, capacity 1

	mu     sync.Mutex // guards queue and paused
	queue  []*kgo.Record
	paused bool
}

func newPartitionWorker(sub *subscription, client *kgo.Client, partition int32) *partitionWorker {
	ctx, cancel := context.WithCancel(sub.ctx)
	return &partitionWorker{
		sub:       sub,
		client:    client,
		partition: partition,
		logger:    sub.logger.With(watermill.LogFields{"partition": partition}),
		ctx:       ctx,
		cancel:    cancel,
		done:      make(chan struct{}),
		wake:      make(chan struct{}, 1),
	}
}

func (w *partitionWorker) tp() map[string][]int32 {
	return map[string][]int32{w.sub.topic: {w.partition}}
}

// push queues fetched records and pauses fetching the partition once its
// queue is full. It never blocks (it runs between poll and AllowRebalance).
func (w *partitionWorker) push(recs []*kgo.Record) {
	w.mu.Lock()
	w.queue = append(w.queue, recs...)
	if !w.paused && len(w.queue) >= w.sub.s.cfg.MaxBufferedRecords {
		// Pause and resume happen under mu, so they cannot be reordered:
		// a resume never precedes the pause it undoes.
		w.paused = true
		w.client.PauseFetchPartitions(w.tp())
	}
	w.mu.Unlock()

	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// pop waits for the next record; false once the worker is stopped.
func (w *partitionWorker) pop() (*kgo.Record, bool) {
	for {
		w.mu.Lock()
		if len(w.queue) > 0 {
			rec := w.queue[0]
			w.queue[0] = nil
			w.queue = w.queue[1:]
			if w.paused && len(w.queue) <= w.sub.s.cfg.MaxBufferedRecords/2 {
				w.paused = false
				w.client.ResumeFetchPartitions(w.tp())
			}
			w.mu.Unlock()
			return rec, true
		}
		w.mu.Unlock()

		select {
		case <-w.wake:
		case <-w.ctx.Done():
			return nil, false
		}
	}
}

func (w *partitionWorker) resumeFetching() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.paused {
		w.paused = false
		w.client.ResumeFetchPartitions(w.tp())
	}
	w.queue = nil
}

func (w *partitionWorker) run() {
	defer close(w.done)
	for {
		rec, ok := w.pop()
		if !ok {
			return
		}
		if !w.deliver(rec) {
			return
		}
	}
}

// deliver hands rec to the subscriber's channel until it is acked, and marks
// it for commit; false if the worker was stopped first.
func (w *partitionWorker) deliver(rec *kgo.Record) bool {
	for {
		msg, err := w.sub.s.cfg.Unmarshaler.Unmarshal(rec)
		if err != nil {
			w.logger.Error("cannot unmarshal record, retrying", err, watermill.LogFields{"offset": rec.Offset})
			if !sleepCtx(w.ctx, w.sub.s.cfg.ReconnectRetrySleep) {
				return false
			}
			continue
		}

		msgCtx, cancelMsg := context.WithCancel(withRecordInfo(w.ctx, rec))
		msg.SetContext(msgCtx)

		select {
		case w.sub.out <- msg:
		case <-w.ctx.Done():
			cancelMsg()
			return false
		}

		select {
		case <-msg.Acked():
			cancelMsg()
			w.client.MarkCommitRecords(rec)
			return true
		case <-msg.Nacked():
			cancelMsg()
			w.logger.Trace("message nacked, redelivering", watermill.LogFields{"offset": rec.Offset, "uuid": msg.UUID})
			if !sleepCtx(w.ctx, w.sub.s.cfg.NackResendSleep) {
				return false
			}
		case <-w.ctx.Done():
			cancelMsg()
			// An Ack that raced with the stop still counts: the caller
			// commits marks only after this worker has exited.
			select {
			case <-msg.Acked():
				w.client.MarkCommitRecords(rec)
			default:
			}
			return false
		}
	}
}
