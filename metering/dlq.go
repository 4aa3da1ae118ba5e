package metering

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
)

// Dead-letter tooling, generic over companyos.dlq.v1: whoever wrote a record
// there (the graph projector and other watermill projectors through
// PoisonQueue, the command processor, the cogs projector), List and Get read
// it back with its reason and origin, and Replay re-drives records to the
// topic they came from, exactly once per DLQ record.

// TopicDLQReplayed is the compacted topic where Replay records which DLQ
// records it re-drove (key "<dlq topic>/<partition>/<offset>"). Markers and
// re-driven records are written in one Kafka transaction, so a record is
// re-driven once however often replay runs.
const TopicDLQReplayed = "companyos.dlq.replayed.v1"

// DLQ record headers. Producers of companyos.dlq.v1 use three conventions
// and ParseDLQRecord understands them all:
//
//   - watermill's PoisonQueue (graph projector): reason_poisoned,
//     topic_poisoned, handler_poisoned, plus source_topic, source_partition
//     and source_offset set by the handler;
//   - the command processor: reason, and source = "<topic>/<partition>/<offset>";
//   - DeadLetter (this package; use it for new producers): reason,
//     source_topic, source_partition, source_offset and attempt.
const (
	HeaderReason          = "reason"
	HeaderSource          = "source"
	HeaderSourceTopic     = "source_topic"
	HeaderSourcePartition = "source_partition"
	HeaderSourceOffset    = "source_offset"
	// HeaderAttempt counts deliveries: absent means 1 (the original one);
	// Replay sets it to the DLQ record's attempt + 1, and PoisonQueue carries
	// it back into the DLQ with the other metadata.
	HeaderAttempt = "attempt"
	// HeaderReplayedFrom marks a re-driven record: "<dlq topic>/<partition>/<offset>".
	HeaderReplayedFrom = "dlq_replayed_from"
)

// dlqHeaders are bookkeeping added on the way into the DLQ; Replay strips
// them from the re-driven record and keeps every other header.
var dlqHeaders = []string{
	HeaderReason, HeaderSource, HeaderSourceTopic, HeaderSourcePartition, HeaderSourceOffset, HeaderAttempt, HeaderReplayedFrom,
	middleware.ReasonForPoisonedKey, middleware.PoisonedTopicKey, middleware.PoisonedHandlerKey, middleware.PoisonedSubscriberKey,
}

// ErrNotFound is returned by DLQ.Get for a position that holds no committed
// record.
var ErrNotFound = errors.New("metering: dlq record not found")

// DeadLetter returns the companyos.dlq.v1 record for rec, a record consumed
// from its topic that could not be processed: the same key, value and
// headers, plus reason and the source position. An attempt header already
// on rec (a re-driven record) is kept; otherwise attempt is 1.
func DeadLetter(rec *kgo.Record, reason string) *kgo.Record {
	headers := make([]kgo.RecordHeader, 0, len(rec.Headers)+5)
	attempt := "1"
	for _, h := range rec.Headers {
		switch h.Key {
		case HeaderAttempt:
			attempt = string(h.Value)
		case HeaderReason, HeaderSourceTopic, HeaderSourcePartition, HeaderSourceOffset:
		default:
			headers = append(headers, h)
		}
	}
	headers = append(headers,
		kgo.RecordHeader{Key: HeaderReason, Value: []byte(reason)},
		kgo.RecordHeader{Key: HeaderSourceTopic, Value: []byte(rec.Topic)},
		kgo.RecordHeader{Key: HeaderSourcePartition, Value: []byte(strconv.Itoa(int(rec.Partition)))},
		kgo.RecordHeader{Key: HeaderSourceOffset, Value: []byte(strconv.FormatInt(rec.Offset, 10))},
		kgo.RecordHeader{Key: HeaderAttempt, Value: []byte(attempt)},
	)
	return &kgo.Record{Topic: events.TopicDLQ, Key: rec.Key, Value: rec.Value, Headers: headers}
}

// DLQRecord is one dead-lettered record with what its headers say.
type DLQRecord struct {
	Partition int32     `json:"partition"`
	Offset    int64     `json:"offset"`
	Time      time.Time `json:"time"`
	Key       string    `json:"key"`
	Reason    string    `json:"reason"`
	// SourceTopic is "" when the headers do not say; SourcePartition and
	// SourceOffset are -1 then.
	SourceTopic     string `json:"source_topic"`
	SourcePartition int32  `json:"source_partition"`
	SourceOffset    int64  `json:"source_offset"`
	Attempt         int    `json:"attempt"`
	Handler         string `json:"handler,omitempty"`
	// Replayed: Replay has already re-driven this record, as ReplayedTo.
	Replayed   bool          `json:"replayed"`
	ReplayedTo *ReplayMarker `json:"replayed_to,omitempty"`

	Headers []kgo.RecordHeader `json:"-"`
	Value   []byte             `json:"-"`
}

// Position is "<partition>:<offset>", the form `companyos dlq show` takes.
func (r DLQRecord) Position() string { return fmt.Sprintf("%d:%d", r.Partition, r.Offset) }

// ParseDLQRecord reads a companyos.dlq.v1 record's headers.
func ParseDLQRecord(rec *kgo.Record) DLQRecord {
	r := DLQRecord{Partition: rec.Partition, Offset: rec.Offset, Time: rec.Timestamp.UTC(), Key: string(rec.Key),
		SourcePartition: -1, SourceOffset: -1, Attempt: 1, Headers: rec.Headers, Value: rec.Value}
	h := map[string]string{}
	for _, hd := range rec.Headers {
		h[hd.Key] = string(hd.Value)
	}
	// A projector may set both: a short code in reason and watermill's full
	// error in reason_poisoned; show (and filter on) both.
	r.Reason = cmp.Or(h[HeaderReason], h[middleware.ReasonForPoisonedKey])
	if code, full := h[HeaderReason], h[middleware.ReasonForPoisonedKey]; code != "" && full != "" && !strings.Contains(full, code) {
		r.Reason = code + ": " + full
	} else if full != "" {
		r.Reason = full
	}
	r.SourceTopic = cmp.Or(h[HeaderSourceTopic], h[middleware.PoisonedTopicKey])
	r.Handler = h[middleware.PoisonedHandlerKey]
	if p, err := strconv.ParseInt(h[HeaderSourcePartition], 10, 32); err == nil {
		r.SourcePartition = int32(p)
	}
	if o, err := strconv.ParseInt(h[HeaderSourceOffset], 10, 64); err == nil {
		r.SourceOffset = o
	}
	// The command processor's form: "<topic>/<partition>/<offset>"; topic
	// names cannot contain "/".
	if src := h[HeaderSource]; src != "" {
		if parts := strings.Split(src, "/"); len(parts) == 3 {
			if r.SourceTopic == "" {
				r.SourceTopic = parts[0]
			}
			if p, err := strconv.ParseInt(parts[1], 10, 32); err == nil && r.SourcePartition < 0 {
				r.SourcePartition = int32(p)
			}
			if o, err := strconv.ParseInt(parts[2], 10, 64); err == nil && r.SourceOffset < 0 {
				r.SourceOffset = o
			}
		}
	}
	if a, err := strconv.Atoi(h[HeaderAttempt]); err == nil && a > 0 {
		r.Attempt = a
	}
	return r
}

// DLQFilter selects DLQ records; the zero value selects all.
type DLQFilter struct {
	SourceTopic string    // exact source topic
	Reason      string    // case-insensitive substring of the reason
	Since       time.Time // records appended at or after
}

// Match reports whether r passes the filter.
func (f DLQFilter) Match(r DLQRecord) bool {
	if f.SourceTopic != "" && r.SourceTopic != f.SourceTopic {
		return false
	}
	if f.Reason != "" && !strings.Contains(strings.ToLower(r.Reason), strings.ToLower(f.Reason)) {
		return false
	}
	return f.Since.IsZero() || !r.Time.Before(f.Since)
}

// DLQConfig configures DLQ tooling.
type DLQConfig struct {
	// Brokers are the Kafka seed brokers (required).
	Brokers []string
	// Topic is the dead-letter topic (optional, default companyos.dlq.v1)
	// and ReplayedTopic the replay markers' (optional, default
	// companyos.dlq.replayed.v1, created compacted when missing).
	Topic         string
	ReplayedTopic string
	// TransactionalID of the replay producer (optional, default
	// "companyos-dlq-replay"). One id for every replay fences concurrent
	// runs: a second replay aborts the first one's open transaction.
	TransactionalID string
	// ProtectedTopics are never re-driven into unless ReplayOptions.
	// AllowProtected (optional, default companyos.events.v1: the source of
	// truth is append-only and written by the processor alone; a projector
	// poisoned by a receipt is fixed and rebuilt, not fed a copy).
	ProtectedTopics []string
	// ClientOpts are extra franz-go options (TLS, SASL…) (optional).
	ClientOpts []kgo.Opt
	// Logger (optional).
	Logger *slog.Logger
}

// Validate reports every missing field.
func (c DLQConfig) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("metering: dlq: brokers required"))
	}
	if c.Topic != "" && c.Topic == c.ReplayedTopic {
		errs = append(errs, errors.New("metering: dlq: topic and replayed topic must differ"))
	}
	return errors.Join(errs...)
}

// DLQ reads and replays a dead-letter topic.
type DLQ struct {
	cfg DLQConfig
	cl  *kgo.Client
	log *slog.Logger
}

// NewDLQ validates cfg and connects (lazily, as franz-go does).
func NewDLQ(cfg DLQConfig) (*DLQ, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Topic = cmp.Or(cfg.Topic, events.TopicDLQ)
	cfg.ReplayedTopic = cmp.Or(cfg.ReplayedTopic, TopicDLQReplayed)
	cfg.TransactionalID = cmp.Or(cfg.TransactionalID, "companyos-dlq-replay")
	if cfg.ProtectedTopics == nil {
		cfg.ProtectedTopics = []string{events.TopicEvents}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}, cfg.ClientOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("metering: dlq: kafka client: %w", err)
	}
	return &DLQ{cfg: cfg, cl: cl, log: cfg.Logger.With("component", "dlq")}, nil
}

// Close releases the Kafka client.
func (d *DLQ) Close() { d.cl.Close() }

// Topic is the dead-letter topic read.
func (d *DLQ) Topic() string { return d.cfg.Topic }

var errStop = errors.New("stop")

// topicPartitions returns the partition count of topic, 0 when it does not
// exist.
func (d *DLQ) topicPartitions(ctx context.Context, topic string) (int, error) {
	td, err := kadm.NewClient(d.cl).ListTopics(ctx, topic)
	if err != nil {
		return 0, fmt.Errorf("metering: dlq: describe %s: %w", topic, err)
	}
	t, ok := td[topic]
	if !ok || errors.Is(t.Err, kerr.UnknownTopicOrPartition) {
		return 0, nil
	}
	if t.Err != nil {
		return 0, fmt.Errorf("metering: dlq: describe %s: %w", topic, t.Err)
	}
	return len(t.Partitions), nil
}

// scan calls fn for every committed DLQ record up to the stable offsets as
// of the call, with Replayed set.
func (d *DLQ) scan(ctx context.Context, fn func(DLQRecord) error) error {
	n, err := d.topicPartitions(ctx, d.cfg.Topic)
	if err != nil || n == 0 {
		return err
	}
	replayed, err := d.loadReplayed(ctx)
	if err != nil {
		return err
	}
	err = events.ReadToStable(ctx, d.cl, d.cfg.Topic, nil, func(rec *kgo.Record) error {
		r := ParseDLQRecord(rec)
		r.setReplayed(replayed, d.markerKey(r.Partition, r.Offset))
		return fn(r)
	})
	if err != nil && !errors.Is(err, errStop) {
		return fmt.Errorf("metering: dlq: read %s: %w", d.cfg.Topic, err)
	}
	return nil
}

// List calls fn for every record matching f, at most limit of them when
// limit > 0, in partition then offset order per partition.
func (d *DLQ) List(ctx context.Context, f DLQFilter, limit int, fn func(DLQRecord) error) error {
	n := 0
	return d.scan(ctx, func(r DLQRecord) error {
		if !f.Match(r) {
			return nil
		}
		if err := fn(r); err != nil {
			return err
		}
		if n++; limit > 0 && n >= limit {
			return errStop
		}
		return nil
	})
}

// Get returns the DLQ record at partition:offset, or ErrNotFound.
func (d *DLQ) Get(ctx context.Context, partition int32, offset int64) (DLQRecord, error) {
	rec, err := d.readOne(ctx, d.cfg.Topic, partition, offset)
	if err != nil {
		return DLQRecord{}, err
	}
	r := ParseDLQRecord(rec)
	replayed, err := d.loadReplayed(ctx)
	if err != nil {
		return DLQRecord{}, err
	}
	r.setReplayed(replayed, d.markerKey(partition, offset))
	return r, nil
}

func (r *DLQRecord) setReplayed(markers map[string]ReplayMarker, key string) {
	if m, ok := markers[key]; ok {
		r.Replayed, r.ReplayedTo = true, &m
	}
}

// readOne reads the committed record at topic/partition/offset.
func (d *DLQ) readOne(ctx context.Context, topic string, partition int32, offset int64) (*kgo.Record, error) {
	n, err := d.topicPartitions(ctx, topic)
	if err != nil {
		return nil, err
	}
	if partition < 0 || int(partition) >= n || offset < 0 {
		return nil, fmt.Errorf("%w: %s has no partition %d or offset %d", ErrNotFound, topic, partition, offset)
	}
	adm := kadm.NewClient(d.cl)
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("metering: dlq: list offsets of %s: %w", topic, err)
	}
	if s, ok := starts.Lookup(topic, partition); ok && s.Err == nil && offset < s.Offset {
		return nil, fmt.Errorf("%w: %s/%d starts at offset %d (%d has expired)", ErrNotFound, topic, partition, s.Offset, offset)
	}
	ends, err := adm.ListCommittedOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("metering: dlq: list offsets of %s: %w", topic, err)
	}
	if e, ok := ends.Lookup(topic, partition); ok && e.Err == nil && offset >= e.Offset {
		return nil, fmt.Errorf("%w: %s/%d ends before offset %d", ErrNotFound, topic, partition, offset)
	}
	var found *kgo.Record
	err = events.Follow(ctx, d.cl, topic, map[int32]int64{partition: offset}, 100*time.Millisecond, func(b events.Batch) error {
		for _, r := range b.Records {
			if r.Offset == offset {
				found = r
				return errStop
			}
			if r.Offset > offset {
				return errStop
			}
		}
		if b.Next > offset || b.Next >= b.Stable {
			return errStop // passed it (aborted or a control record), or at the end
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, fmt.Errorf("metering: dlq: read %s/%d@%d: %w", topic, partition, offset, err)
	}
	if found == nil {
		return nil, fmt.Errorf("%w: no committed record at %s %d:%d", ErrNotFound, topic, partition, offset)
	}
	return found, nil
}

func (d *DLQ) markerKey(partition int32, offset int64) string {
	return d.cfg.Topic + "/" + strconv.Itoa(int(partition)) + "/" + strconv.FormatInt(offset, 10)
}

// ReplayMarker is the value of a TopicDLQReplayed record.
type ReplayMarker struct {
	DLQTopic        string    `json:"dlq_topic"`
	DLQPartition    int32     `json:"dlq_partition"`
	DLQOffset       int64     `json:"dlq_offset"`
	TargetTopic     string    `json:"target_topic"`
	TargetPartition int32     `json:"target_partition"`
	TargetOffset    int64     `json:"target_offset"`
	Attempt         int       `json:"attempt"`
	ReplayedAt      time.Time `json:"replayed_at"`
}

// loadReplayed reads every committed replay marker.
func (d *DLQ) loadReplayed(ctx context.Context) (map[string]ReplayMarker, error) {
	out := map[string]ReplayMarker{}
	n, err := d.topicPartitions(ctx, d.cfg.ReplayedTopic)
	if err != nil || n == 0 {
		return out, err
	}
	err = events.ReadToStable(ctx, d.cl, d.cfg.ReplayedTopic, nil, func(rec *kgo.Record) error {
		var m ReplayMarker
		if rec.Value == nil {
			delete(out, string(rec.Key)) // a tombstone forgets a replay
			return nil
		}
		_ = json.Unmarshal(rec.Value, &m)
		out[string(rec.Key)] = m
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("metering: dlq: read %s: %w", d.cfg.ReplayedTopic, err)
	}
	return out, nil
}

// ReplayOptions say what Replay re-drives.
type ReplayOptions struct {
	Filter DLQFilter
	// DryRun reports what would be re-driven and writes nothing.
	DryRun bool
	// AllowProtected also re-drives into DLQConfig.ProtectedTopics.
	AllowProtected bool
	// BatchSize is how many records one transaction re-drives (optional,
	// default 100).
	BatchSize int
	// Progress is called after every committed transaction (optional).
	Progress func(done, total int)
}

// Replay outcomes.
const (
	OutcomeReplayed        = "replayed"
	OutcomeWouldReplay     = "would-replay"
	OutcomeAlreadyReplayed = "already-replayed"
	OutcomeSkipped         = "skipped"
)

// ReplayItem is what Replay did with one matching DLQ record.
type ReplayItem struct {
	DLQPartition    int32  `json:"dlq_partition"`
	DLQOffset       int64  `json:"dlq_offset"`
	TargetTopic     string `json:"target_topic,omitempty"`
	TargetPartition int32  `json:"target_partition"`
	TargetOffset    int64  `json:"target_offset"`
	Attempt         int    `json:"attempt,omitempty"` // of the re-driven record
	Outcome         string `json:"outcome"`
	Detail          string `json:"detail,omitempty"`
}

// ReplaySummary counts Replay's work; Items lists every matching record.
type ReplaySummary struct {
	DryRun          bool         `json:"dry_run"`
	Matched         int          `json:"matched"`
	Replayed        int          `json:"replayed"`
	WouldReplay     int          `json:"would_replay"`
	AlreadyReplayed int          `json:"already_replayed"`
	Skipped         int          `json:"skipped"`
	Items           []ReplayItem `json:"items"`
}

type pending struct {
	rec  DLQRecord
	item *ReplayItem
}

// Replay re-produces every DLQ record matching opts.Filter to its source
// topic — the source partition when known, the original key (the DLQ
// record's, or else the source record's), the headers minus the DLQ
// bookkeeping, attempt incremented and dlq_replayed_from set — in source
// order. Each batch of re-driven records is committed in one transaction
// with its markers on TopicDLQReplayed, so a record already re-driven is
// reported already-replayed and never re-driven again. Records without a
// source topic, or whose source is protected, are skipped.
//
// On error the summary covers the transactions committed so far.
func (d *DLQ) Replay(ctx context.Context, opts ReplayOptions) (ReplaySummary, error) {
	sum := ReplaySummary{DryRun: opts.DryRun, Items: []ReplayItem{}}
	var todo []pending
	var recs []DLQRecord
	err := d.scan(ctx, func(r DLQRecord) error {
		if opts.Filter.Match(r) {
			recs = append(recs, r)
		}
		return nil
	})
	if err != nil {
		return sum, err
	}
	// Re-drive in the order the records had in their source.
	slices.SortStableFunc(recs, func(a, b DLQRecord) int {
		return cmp.Or(strings.Compare(a.SourceTopic, b.SourceTopic), cmp.Compare(a.SourcePartition, b.SourcePartition),
			cmp.Compare(a.SourceOffset, b.SourceOffset), cmp.Compare(a.Partition, b.Partition), cmp.Compare(a.Offset, b.Offset))
	})
	sum.Items = make([]ReplayItem, len(recs))
	partitions := map[string]int{}
	for i, r := range recs {
		sum.Matched++
		it := &sum.Items[i]
		*it = ReplayItem{DLQPartition: r.Partition, DLQOffset: r.Offset, TargetTopic: r.SourceTopic, TargetPartition: -1, TargetOffset: -1}
		skip := func(format string, args ...any) {
			it.Outcome, it.Detail = OutcomeSkipped, fmt.Sprintf(format, args...)
			sum.Skipped++
		}
		switch {
		case r.Replayed:
			it.Outcome = OutcomeAlreadyReplayed
			if m := r.ReplayedTo; m != nil {
				it.TargetTopic, it.TargetPartition, it.TargetOffset, it.Attempt = m.TargetTopic, m.TargetPartition, m.TargetOffset, m.Attempt
				it.Detail = "at " + m.ReplayedAt.Format(time.RFC3339)
			}
			sum.AlreadyReplayed++
			continue
		case r.SourceTopic == "":
			skip("the headers name no source topic")
			continue
		case r.SourceTopic == d.cfg.Topic || r.SourceTopic == d.cfg.ReplayedTopic:
			skip("source topic %s is the DLQ itself", r.SourceTopic)
			continue
		case slices.Contains(d.cfg.ProtectedTopics, r.SourceTopic) && !opts.AllowProtected:
			skip("%s is protected (append-only source of truth); fix the consumer and rebuild its projection, or force with --allow-protected", r.SourceTopic)
			continue
		}
		n, ok := partitions[r.SourceTopic]
		if !ok {
			if n, err = d.topicPartitions(ctx, r.SourceTopic); err != nil {
				return sum, err
			}
			partitions[r.SourceTopic] = n
		}
		if n == 0 {
			skip("source topic %s does not exist", r.SourceTopic)
			continue
		}
		if r.Key == "" && r.SourceTopic != "" && r.SourcePartition >= 0 && r.SourceOffset >= 0 {
			if src, err := d.readOne(ctx, r.SourceTopic, r.SourcePartition, r.SourceOffset); err == nil {
				r.Key = string(src.Key)
			} else if !errors.Is(err, ErrNotFound) {
				return sum, err
			}
		}
		it.TargetPartition = targetPartition(r, n)
		it.Attempt = r.Attempt + 1
		if opts.DryRun {
			it.Outcome = OutcomeWouldReplay
			sum.WouldReplay++
			continue
		}
		todo = append(todo, pending{rec: r, item: it})
	}
	if len(todo) == 0 {
		return sum, nil
	}
	if err := d.ensureReplayedTopic(ctx); err != nil {
		return sum, err
	}
	prod, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(d.cfg.Brokers...), kgo.TransactionalID(d.cfg.TransactionalID),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.TransactionTimeout(time.Minute)}, d.cfg.ClientOpts...)...)
	if err != nil {
		return sum, fmt.Errorf("metering: dlq: replay producer: %w", err)
	}
	defer prod.Close()
	size := cmp.Or(opts.BatchSize, 100)
	for start := 0; start < len(todo); start += size {
		chunk := todo[start:min(start+size, len(todo))]
		if err := d.replayChunk(ctx, prod, chunk); err != nil {
			return sum, err
		}
		for _, p := range chunk {
			sum.Replayed++
			p.item.Outcome = OutcomeReplayed
		}
		if opts.Progress != nil {
			opts.Progress(start+len(chunk), len(todo))
		}
	}
	return sum, nil
}

// targetPartition: the source partition when it still exists, else where
// the default (Kafka murmur2) partitioner puts the key, else 0.
func targetPartition(r DLQRecord, n int) int32 {
	switch {
	case r.SourcePartition >= 0 && int(r.SourcePartition) < n:
		return r.SourcePartition
	case r.Key != "":
		return int32(kgo.StickyKeyPartitioner(nil).ForTopic(r.SourceTopic).Partition(&kgo.Record{Key: []byte(r.Key)}, n))
	default:
		return 0
	}
}

// replayChunk re-drives chunk and writes its markers in one transaction.
func (d *DLQ) replayChunk(ctx context.Context, prod *kgo.Client, chunk []pending) (err error) {
	if err := prod.BeginTransaction(); err != nil {
		return fmt.Errorf("metering: dlq: begin transaction: %w", err)
	}
	defer func() {
		if err != nil {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_ = prod.AbortBufferedRecords(actx)
			if aerr := prod.EndTransaction(actx, kgo.TryAbort); aerr != nil {
				d.log.Warn("abort replay transaction", "err", aerr)
			}
		}
	}()
	redrive := make([]*kgo.Record, len(chunk))
	for i, p := range chunk {
		redrive[i] = redriveRecord(p.rec, p.item, d.markerKey(p.rec.Partition, p.rec.Offset))
	}
	results := prod.ProduceSync(ctx, redrive...)
	if err := results.FirstErr(); err != nil {
		return fmt.Errorf("metering: dlq: re-drive: %w", err)
	}
	now := time.Now().UTC()
	markers := make([]*kgo.Record, len(chunk))
	for i, p := range chunk {
		p.item.TargetOffset = results[i].Record.Offset
		v, _ := json.Marshal(ReplayMarker{DLQTopic: d.cfg.Topic, DLQPartition: p.rec.Partition, DLQOffset: p.rec.Offset,
			TargetTopic: p.item.TargetTopic, TargetPartition: p.item.TargetPartition, TargetOffset: p.item.TargetOffset,
			Attempt: p.item.Attempt, ReplayedAt: now})
		markers[i] = &kgo.Record{Topic: d.cfg.ReplayedTopic, Partition: 0, Key: []byte(d.markerKey(p.rec.Partition, p.rec.Offset)), Value: v}
	}
	if err := prod.ProduceSync(ctx, markers...).FirstErr(); err != nil {
		return fmt.Errorf("metering: dlq: write replay markers: %w", err)
	}
	if err := prod.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return fmt.Errorf("metering: dlq: commit replay: %w", err)
	}
	return nil
}

// redriveRecord rebuilds the source record from a DLQ record.
func redriveRecord(r DLQRecord, it *ReplayItem, from string) *kgo.Record {
	headers := make([]kgo.RecordHeader, 0, len(r.Headers)+2)
	for _, h := range r.Headers {
		if !slices.Contains(dlqHeaders, h.Key) {
			headers = append(headers, h)
		}
	}
	headers = append(headers,
		kgo.RecordHeader{Key: HeaderAttempt, Value: []byte(strconv.Itoa(it.Attempt))},
		kgo.RecordHeader{Key: HeaderReplayedFrom, Value: []byte(from)})
	var key []byte
	if r.Key != "" {
		key = []byte(r.Key)
	}
	return &kgo.Record{Topic: r.SourceTopic, Partition: it.TargetPartition, Key: key, Value: r.Value, Headers: headers}
}

// ensureReplayedTopic creates the compacted marker topic when missing.
func (d *DLQ) ensureReplayedTopic(ctx context.Context) error {
	compact := "compact"
	resp, err := kadm.NewClient(d.cl).CreateTopic(ctx, 1, -1, map[string]*string{"cleanup.policy": &compact}, d.cfg.ReplayedTopic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("metering: dlq: create %s: %w", d.cfg.ReplayedTopic, err)
	}
	// kadm answers from metadata cached for a few seconds, which may still
	// say the topic does not exist.
	d.cl.PurgeTopicsFromClient(d.cfg.ReplayedTopic)
	return nil
}
