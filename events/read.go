package events

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Position-exact, read-committed reading.
//
// A consumer that only sees records cannot tell whether it has reached the
// last stable offset: aborted records are filtered out, and a transaction
// left open by a crash may be aborted without a marker. These readers issue
// fetches themselves and take the position from each response (franz-go's
// ProcessFetchPartition applies the aborted-transaction filter), so "caught
// up" is exact.

// Batch is what one fetch returned for one partition: its committed records
// and the position after them.
type Batch struct {
	Partition int32
	Records   []*kgo.Record
	Next      int64 // offset after everything this fetch covered
	Stable    int64 // the partition's last stable offset as of this fetch
}

// Follow reads topic from the given offsets until ctx ends, calling fn for
// every fetched partition — also when it returned no committed records, so
// the caller always knows its position. maxWait bounds one fetch.
func Follow(ctx context.Context, cl *kgo.Client, topic string, from map[int32]int64, maxWait time.Duration, fn func(Batch) error) error {
	return follow(ctx, cl, topic, from, nil, maxWait, fn)
}

// ReadToStable reads the given partitions (all when nil) from their start to
// their last stable offset as of the call, calling fn for each committed
// record in order.
func ReadToStable(ctx context.Context, cl *kgo.Client, topic string, partitions []int32, fn func(*kgo.Record) error) error {
	adm := kadm.NewClient(cl)
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return fmt.Errorf("events: list start offsets of %s: %w", topic, err)
	}
	ends, err := adm.ListCommittedOffsets(ctx, topic)
	if err != nil {
		return fmt.Errorf("events: list stable offsets of %s: %w", topic, err)
	}
	want := map[int32]bool{}
	for _, p := range partitions {
		want[p] = true
	}
	from, until := map[int32]int64{}, map[int32]int64{}
	var lerr error
	ends.Each(func(o kadm.ListedOffset) {
		if partitions != nil && !want[o.Partition] {
			return
		}
		s, _ := starts.Lookup(topic, o.Partition)
		if o.Err != nil || s.Err != nil {
			lerr = fmt.Errorf("events: offsets of %s/%d: %v %v", topic, o.Partition, o.Err, s.Err)
		}
		from[o.Partition], until[o.Partition] = s.Offset, o.Offset
	})
	if lerr != nil {
		return lerr
	}
	return follow(ctx, cl, topic, from, until, 100*time.Millisecond, func(b Batch) error {
		for _, r := range b.Records {
			if r.Offset >= until[b.Partition] {
				break
			}
			if err := fn(r); err != nil {
				return err
			}
		}
		return nil
	})
}

func follow(ctx context.Context, cl *kgo.Client, topic string, from, until map[int32]int64, maxWait time.Duration, fn func(Batch) error) error {
	td, err := kadm.NewClient(cl).ListTopics(ctx, topic)
	if err != nil {
		return fmt.Errorf("events: describe %s: %w", topic, err)
	}
	d, ok := td[topic]
	if !ok || d.Err != nil {
		return fmt.Errorf("events: describe %s: %v", topic, d.Err)
	}
	next := map[int32]int64{}
	for p, o := range from {
		next[p] = o
	}
	// suspect partitions came back empty below their stable offset in a
	// fetch that asked for several: that is what a response-size limit
	// looks like, so they are re-fetched alone before concluding anything.
	suspect := map[int32]bool{}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		req := kmsg.NewPtrFetchRequest()
		req.ReplicaID = -1
		req.MaxWaitMillis = int32(maxWait / time.Millisecond)
		req.MinBytes = 1
		req.MaxBytes = 32 << 20
		req.IsolationLevel = 1 // read_committed
		req.SessionEpoch = -1  // full fetch, no session
		rt := kmsg.NewFetchRequestTopic()
		rt.Topic, rt.TopicID = topic, d.ID
		alone := int32(-1)
		for p := range suspect {
			if alone < 0 || p < alone {
				alone = p
			}
		}
		for p, o := range next {
			if until != nil && o >= until[p] {
				delete(suspect, p)
				continue
			}
			if alone >= 0 && p != alone {
				continue
			}
			rp := kmsg.NewFetchRequestTopicPartition()
			rp.Partition, rp.FetchOffset, rp.PartitionMaxBytes = p, o, 8<<20
			rp.CurrentLeaderEpoch, rp.LastFetchedEpoch, rp.LogStartOffset = -1, -1, -1
			rt.Partitions = append(rt.Partitions, rp)
		}
		if len(rt.Partitions) == 0 {
			return nil // every partition reached its bound
		}
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, cl)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("events: fetch %s: %w", topic, err)
		}
		if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
			return fmt.Errorf("events: fetch %s: %w", topic, err)
		}
		for _, t := range resp.Topics {
			for i := range t.Partitions {
				rp := &t.Partitions[i]
				if err := kerr.ErrorForCode(rp.ErrorCode); err != nil {
					return fmt.Errorf("events: fetch %s/%d: %w", topic, rp.Partition, err)
				}
				fp, after := kgo.ProcessFetchPartition(kgo.ProcessFetchPartitionOpts{
					Offset: next[rp.Partition], IsolationLevel: kgo.ReadCommitted(), Topic: topic, Partition: rp.Partition,
				}, rp, kgo.DefaultDecompressor(), nil)
				if fp.Err != nil {
					return fmt.Errorf("events: fetch %s/%d at %d: %w", topic, rp.Partition, next[rp.Partition], fp.Err)
				}
				// A transaction left open by a crash and aborted without
				// a marker leaves records below the stable offset that
				// read-committed never returns: skip to the stable
				// offset when nothing committed is left below it. An
				// empty answer in a multi-partition fetch may instead be
				// the response-size limit, so that partition is asked
				// again on its own first; only a lone empty answer skips.
				if after < rp.LastStableOffset && len(rp.RecordBatches) == 0 {
					if len(rt.Partitions) == 1 {
						after = rp.LastStableOffset
						delete(suspect, rp.Partition)
					} else {
						suspect[rp.Partition] = true
					}
				} else {
					delete(suspect, rp.Partition)
				}
				if after < next[rp.Partition] {
					after = next[rp.Partition]
				}
				next[rp.Partition] = after
				if err := fn(Batch{Partition: rp.Partition, Records: fp.Records, Next: after, Stable: rp.LastStableOffset}); err != nil {
					return err
				}
			}
		}
	}
}
