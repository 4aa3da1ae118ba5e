package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
)

// ReceiptIndex maps receipt ids to where the receipt lives in
// companyos.events.v1, for GET /v1/commands/{receipt_id}. It holds a small
// summary per receipt in memory; the full envelope is read back from Kafka.
type ReceiptIndex struct {
	brokers []string
	cl      *kgo.Client
	log     *slog.Logger

	mu   sync.RWMutex
	byID map[string]IndexEntry
	next map[int32]int64 // per partition: offset after the last record seen
}

// IndexEntry summarises one receipt.
type IndexEntry struct {
	ReceiptID string    `json:"receipt_id"`
	CommandID string    `json:"command_id"`
	Tenant    string    `json:"tenant"`
	Type      string    `json:"type"`
	Actor     string    `json:"actor"`
	Subject   string    `json:"subject"`
	Decision  string    `json:"decision"`
	Seq       uint64    `json:"seq"`
	Version   uint64    `json:"version,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	Partition int32     `json:"partition"`
	Offset    int64     `json:"offset"`
}

// NewReceiptIndex reads companyos.events.v1 from the start.
func NewReceiptIndex(brokers []string, log *slog.Logger) (*ReceiptIndex, error) {
	if log == nil {
		log = slog.Default()
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return nil, err
	}
	return &ReceiptIndex{brokers: brokers, cl: cl, log: log.With("component", "receipt-index"),
		byID: map[string]IndexEntry{}, next: map[int32]int64{}}, nil
}

// Run indexes receipts until ctx is done.
func (ix *ReceiptIndex) Run(ctx context.Context) error {
	defer ix.cl.Close()
	starts, err := kadm.NewClient(ix.cl).ListStartOffsets(ctx, events.TopicEvents)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("receipt index: %w", err)
	}
	from := map[int32]int64{}
	starts.Each(func(o kadm.ListedOffset) { from[o.Partition] = o.Offset })
	err = events.Follow(ctx, ix.cl, events.TopicEvents, from, 500*time.Millisecond, func(b events.Batch) error {
		entries := make([]IndexEntry, 0, len(b.Records))
		for _, rec := range b.Records {
			e, err := summarise(rec)
			if err != nil {
				ix.log.Error("unreadable receipt", "partition", rec.Partition, "offset", rec.Offset, "err", err)
				continue
			}
			entries = append(entries, e)
		}
		ix.mu.Lock()
		for _, e := range entries {
			ix.byID[e.ReceiptID] = e
		}
		ix.next[b.Partition] = b.Next
		ix.mu.Unlock()
		return nil
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// indexedReceipt is the part of a receipt the index keeps; decoding into
// it skips the large raw fields.
type indexedReceipt struct {
	ID        string    `json:"id"`
	Action    string    `json:"action"`
	Actor     string    `json:"actor"`
	Tenant    string    `json:"tenant"`
	Decision  string    `json:"decision"`
	CreatedAt time.Time `json:"created_at"`
	Seq       uint64    `json:"seq"`
	CommandID string    `json:"command_id"`
	Subject   string    `json:"subject"`
	Change    *struct {
		Entity *struct {
			Version uint64 `json:"version"`
		} `json:"entity"`
	} `json:"change"`
}

func summarise(rec *kgo.Record) (IndexEntry, error) {
	env, err := events.ParseEnvelope(rec.Value)
	if err != nil {
		return IndexEntry{}, err
	}
	var r indexedReceipt
	if err := json.Unmarshal(env.Payload, &r); err != nil {
		return IndexEntry{}, err
	}
	e := IndexEntry{ReceiptID: r.ID, CommandID: r.CommandID, Tenant: r.Tenant, Type: r.Action, Actor: r.Actor,
		Subject: r.Subject, Decision: r.Decision, Seq: r.Seq, CreatedAt: r.CreatedAt, Partition: rec.Partition, Offset: rec.Offset}
	if r.Decision == events.DecisionAllow && r.Change != nil && r.Change.Entity != nil {
		e.Version = r.Change.Entity.Version
	}
	return e, nil
}

// Lookup finds a receipt. When it is not (yet) indexed, Lookup waits until
// the index has caught up with everything committed before the call, so a
// client that just got a receipt id can always read it back.
func (ix *ReceiptIndex) Lookup(ctx context.Context, id string) (IndexEntry, bool, error) {
	ix.mu.RLock()
	e, ok := ix.byID[id]
	ix.mu.RUnlock()
	if ok {
		return e, true, nil
	}
	if err := ix.WaitCaughtUp(ctx); err != nil {
		return IndexEntry{}, false, err
	}
	ix.mu.RLock()
	e, ok = ix.byID[id]
	ix.mu.RUnlock()
	return e, ok, nil
}

// WaitCaughtUp blocks until the index has read every partition up to its
// last stable offset as of the call.
func (ix *ReceiptIndex) WaitCaughtUp(ctx context.Context) error {
	offs, err := kadm.NewClient(ix.cl).ListCommittedOffsets(ctx, events.TopicEvents)
	if err != nil {
		return fmt.Errorf("receipt index: list offsets: %w", err)
	}
	target := map[int32]int64{}
	offs.Each(func(o kadm.ListedOffset) { target[o.Partition] = o.Offset })
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		ix.mu.RLock()
		behind := false
		for p, o := range target {
			if ix.next[p] < o {
				behind = true
				break
			}
		}
		ix.mu.RUnlock()
		if !behind {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// ErrNotFound is returned when a record is missing from the log.
var ErrNotFound = errors.New("commands: not found")

// FetchEnvelope reads the raw envelope of an indexed receipt from Kafka.
func (ix *ReceiptIndex) FetchEnvelope(ctx context.Context, e IndexEntry) (json.RawMessage, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(ix.brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{events.TopicEvents: {e.Partition: kgo.NewOffset().At(e.Offset)}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(100*time.Millisecond),
	)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	for {
		fs := cl.PollRecords(ctx, 1)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err := fs.Err0(); err != nil {
			return nil, err
		}
		var out json.RawMessage
		fs.EachRecord(func(rec *kgo.Record) {
			if out == nil && rec.Offset == e.Offset {
				out = rec.Value
			}
		})
		if out != nil {
			return out, nil
		}
	}
}
