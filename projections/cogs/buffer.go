package cogs

import (
	"context"
	"sync"
)

// batch is what one flush writes: the events and prices handled since the
// previous flush, and how far each consumed partition is handled.
type batch struct {
	rows   []*eventRow
	prices []*priceRow
	// next is, per partition, the next offset not yet handled: every record
	// below it is in this batch, in an earlier one, or in the DLQ.
	next map[topicPartition]int64
}

func (b *batch) empty() bool { return len(b.rows) == 0 && len(b.prices) == 0 && len(b.next) == 0 }

// buffer collects handled messages for the flusher. Handlers add to it and
// return, so the message is acked before ClickHouse has it; that is safe
// because the projector's positions live in ClickHouse and are written only
// after the rows (see Projector).
type buffer struct {
	batchSize, max int

	mu      sync.Mutex
	cur     *batch
	drained chan struct{} // closed when cur is taken
	kick    chan struct{} // capacity 1: asks the flusher to flush now
}

func newBuffer(batchSize, max int) *buffer {
	return &buffer{batchSize: batchSize, max: max, cur: &batch{next: map[topicPartition]int64{}},
		drained: make(chan struct{}), kick: make(chan struct{}, 1)}
}

// add appends an event row or a price row. While the buffer is full (a
// flush is slow or failing) it waits, which stalls the partitions: memory
// stays bounded. It gives up when ctx (the message's) ends.
func (b *buffer) add(ctx context.Context, row *eventRow, price *priceRow) error {
	b.mu.Lock()
	for len(b.cur.rows)+len(b.cur.prices) >= b.max {
		drained := b.drained
		b.mu.Unlock()
		b.signal()
		select {
		case <-drained:
		case <-ctx.Done():
			return ctx.Err()
		}
		b.mu.Lock()
	}
	if row != nil {
		b.cur.rows = append(b.cur.rows, row)
	}
	if price != nil {
		b.cur.prices = append(b.cur.prices, price)
	}
	full := len(b.cur.rows)+len(b.cur.prices) >= b.batchSize
	b.mu.Unlock()
	if full {
		b.signal()
	}
	return nil
}

// mark records that every record of tp below next is handled.
func (b *buffer) mark(tp topicPartition, next int64) {
	b.mu.Lock()
	if next > b.cur.next[tp] {
		b.cur.next[tp] = next
	}
	b.mu.Unlock()
}

func (b *buffer) signal() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// take hands the current batch to the flusher and starts a new one.
func (b *buffer) take() *batch {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.cur
	b.cur = &batch{next: map[topicPartition]int64{}}
	close(b.drained)
	b.drained = make(chan struct{})
	return out
}
