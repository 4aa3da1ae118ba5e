package metering_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/metering"
)

// dlqFixture writes one source record to each of three topics and the DLQ
// record each kind of producer would write for it:
//   - graph projector (watermill PoisonQueue): no key, *_poisoned headers plus
//     source_topic/partition/offset;
//   - command processor: the key, reason and source "<topic>/<p>/<o>";
//   - DeadLetter (cogs projector): everything, attempt 1.
type dlqFixture struct {
	k       *kafka
	dlq     *metering.DLQ
	sources map[string]*kgo.Record // by topic, as produced
}

func newDLQFixture(t *testing.T) *dlqFixture {
	t.Helper()
	k := startKafka(t)
	ctx := context.Background()
	cl := k.client(t, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	f := &dlqFixture{k: k, sources: map[string]*kgo.Record{}}
	for _, src := range []*kgo.Record{
		{Topic: events.TopicEvents, Partition: 1, Key: []byte("acme"), Value: []byte(`{"payloadType":"receipt"}`)},
		{Topic: events.TopicCommands, Partition: 2, Key: []byte("globex"), Value: []byte(`not json`)},
		{Topic: events.TopicMetering, Partition: 0, Key: []byte("acme"), Value: []byte(`{"id":"m-1","quantity":"x"}`),
			Headers: []kgo.RecordHeader{{Key: metering.HeaderCEID, Value: []byte("m-1")}}},
	} {
		if err := cl.ProduceSync(ctx, src).FirstErr(); err != nil {
			t.Fatal(err)
		}
		f.sources[src.Topic] = src
	}
	ev, cmd, met := f.sources[events.TopicEvents], f.sources[events.TopicCommands], f.sources[events.TopicMetering]
	pos := func(r *kgo.Record) (string, string) {
		return strconv.Itoa(int(r.Partition)), strconv.FormatInt(r.Offset, 10)
	}
	evP, evO := pos(ev)
	dead := []*kgo.Record{
		{Topic: events.TopicDLQ, Partition: 0, Value: ev.Value, Headers: []kgo.RecordHeader{
			{Key: "_watermill_message_uuid", Value: []byte("uuid-1")},
			{Key: middleware.ReasonForPoisonedKey, Value: []byte("graph projector: poison receipt: unknown change kind")},
			{Key: middleware.PoisonedTopicKey, Value: []byte(events.TopicEvents)},
			{Key: middleware.PoisonedHandlerKey, Value: []byte("graph-projector")},
			{Key: middleware.PoisonedSubscriberKey, Value: []byte("wmkafka")},
			{Key: "source_topic", Value: []byte(events.TopicEvents)},
			{Key: "source_partition", Value: []byte(evP)},
			{Key: "source_offset", Value: []byte(evO)},
		}},
		{Topic: events.TopicDLQ, Partition: 0, Key: cmd.Key, Value: cmd.Value, Headers: []kgo.RecordHeader{
			{Key: "reason", Value: []byte("malformed command record: invalid character 'o'")},
			{Key: "source", Value: []byte(events.TopicCommands + "/2/" + strconv.FormatInt(cmd.Offset, 10))},
		}},
	}
	dl := metering.DeadLetter(met, "cogs projector: quantity is not a decimal")
	dl.Partition = 1
	dead = append(dead, dl)
	if err := cl.ProduceSync(ctx, dead...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	d, err := metering.NewDLQ(metering.DLQConfig{Brokers: k.brokers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	f.dlq = d
	return f
}

func (f *dlqFixture) list(t *testing.T, filter metering.DLQFilter) []metering.DLQRecord {
	t.Helper()
	var out []metering.DLQRecord
	if err := f.dlq.List(context.Background(), filter, 0, func(r metering.DLQRecord) error {
		out = append(out, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDLQList(t *testing.T) {
	f := newDLQFixture(t)
	all := f.list(t, metering.DLQFilter{})
	if len(all) != 3 {
		t.Fatalf("%d records, want 3: %+v", len(all), all)
	}
	by := map[string]metering.DLQRecord{}
	for _, r := range all {
		by[r.SourceTopic] = r
		if r.Attempt != 1 || r.Replayed || r.Time.IsZero() {
			t.Errorf("%+v", r)
		}
	}
	ev, cmd, met := f.sources[events.TopicEvents], f.sources[events.TopicCommands], f.sources[events.TopicMetering]
	if r := by[events.TopicEvents]; r.SourcePartition != 1 || r.SourceOffset != ev.Offset || r.Key != "" || r.Handler != "graph-projector" ||
		r.Reason != "graph projector: poison receipt: unknown change kind" || r.Position() != "0:0" {
		t.Errorf("watermill record %+v", r)
	}
	if r := by[events.TopicCommands]; r.SourcePartition != 2 || r.SourceOffset != cmd.Offset || r.Key != "globex" || r.Reason == "" {
		t.Errorf("processor record %+v", r)
	}
	if r := by[events.TopicMetering]; r.SourcePartition != 0 || r.SourceOffset != met.Offset || r.Key != "acme" || r.Partition != 1 {
		t.Errorf("DeadLetter record %+v", r)
	}

	if got := f.list(t, metering.DLQFilter{SourceTopic: events.TopicMetering}); len(got) != 1 || got[0].SourceTopic != events.TopicMetering {
		t.Errorf("--source-topic: %+v", got)
	}
	if got := f.list(t, metering.DLQFilter{Reason: "MALFORMED"}); len(got) != 1 || got[0].SourceTopic != events.TopicCommands {
		t.Errorf("--reason: %+v", got)
	}
	if got := f.list(t, metering.DLQFilter{Since: time.Now().Add(time.Hour)}); len(got) != 0 {
		t.Errorf("--since in the future: %+v", got)
	}
	if got := f.list(t, metering.DLQFilter{Since: time.Now().Add(-time.Hour)}); len(got) != 3 {
		t.Errorf("--since an hour ago: %d", len(got))
	}
	n := 0
	if err := f.dlq.List(context.Background(), metering.DLQFilter{}, 2, func(metering.DLQRecord) error { n++; return nil }); err != nil || n != 2 {
		t.Errorf("limit 2: %d, %v", n, err)
	}
}

func TestDLQListEmpty(t *testing.T) {
	k := startKafka(t)
	d, err := metering.NewDLQ(metering.DLQConfig{Brokers: k.brokers, Topic: "no.such.dlq"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.List(context.Background(), metering.DLQFilter{}, 0, func(metering.DLQRecord) error {
		t.Fatal("a record in a missing topic")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestDLQShow(t *testing.T) {
	f := newDLQFixture(t)
	r, err := f.dlq.Get(context.Background(), 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.SourceTopic != events.TopicMetering || string(r.Value) != `{"id":"m-1","quantity":"x"}` {
		t.Fatalf("%+v", r)
	}
	h := map[string]string{}
	for _, x := range r.Headers {
		h[x.Key] = string(x.Value)
	}
	if h[metering.HeaderCEID] != "m-1" || h[metering.HeaderReason] != "cogs projector: quantity is not a decimal" || h[metering.HeaderAttempt] != "1" {
		t.Fatalf("headers %v", h)
	}
	for _, pos := range [][2]int64{{1, 1}, {0, 99}, {7, 0}} {
		if _, err := f.dlq.Get(context.Background(), int32(pos[0]), pos[1]); !errors.Is(err, metering.ErrNotFound) {
			t.Errorf("Get(%d:%d) = %v, want ErrNotFound", pos[0], pos[1], err)
		}
	}
}

func TestDLQReplay(t *testing.T) {
	f := newDLQFixture(t)
	ctx := context.Background()

	// Dry run: reports, writes nothing.
	sum, err := f.dlq.Replay(ctx, metering.ReplayOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Matched != 3 || sum.WouldReplay != 2 || sum.Skipped != 1 || sum.Replayed != 0 {
		t.Fatalf("dry run %+v", sum)
	}
	if n := len(f.k.records(t, events.TopicMetering)); n != 1 {
		t.Fatalf("dry run wrote: %d records", n)
	}

	// Only the metering one.
	progress := 0
	sum, err = f.dlq.Replay(ctx, metering.ReplayOptions{Filter: metering.DLQFilter{SourceTopic: events.TopicMetering},
		Progress: func(done, total int) { progress = done }})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Matched != 1 || sum.Replayed != 1 || progress != 1 {
		t.Fatalf("replay %+v", sum)
	}
	it := sum.Items[0]
	if it.Outcome != metering.OutcomeReplayed || it.TargetTopic != events.TopicMetering || it.TargetPartition != 0 || it.Attempt != 2 || it.TargetOffset != 1 {
		t.Fatalf("item %+v", it)
	}
	recs := f.k.records(t, events.TopicMetering)
	if len(recs) != 2 {
		t.Fatalf("%d records on %s, want the original and the re-driven one", len(recs), events.TopicMetering)
	}
	re := recs[1]
	h := map[string]string{}
	for _, x := range re.Headers {
		h[x.Key] = string(x.Value)
	}
	if string(re.Key) != "acme" || re.Partition != 0 || string(re.Value) != `{"id":"m-1","quantity":"x"}` ||
		h[metering.HeaderAttempt] != "2" || h[metering.HeaderReplayedFrom] != events.TopicDLQ+"/1/0" || h[metering.HeaderCEID] != "m-1" {
		t.Fatalf("re-driven record key %q partition %d headers %v", re.Key, re.Partition, h)
	}
	for _, k := range []string{metering.HeaderReason, metering.HeaderSourceTopic, metering.HeaderSourcePartition, metering.HeaderSourceOffset} {
		if _, ok := h[k]; ok {
			t.Errorf("DLQ header %s carried over", k)
		}
	}

	// Twice: nothing new. Everything else: the command record is re-driven,
	// the receipt is not (companyos.events.v1 is protected).
	for round := range 2 {
		sum, err = f.dlq.Replay(ctx, metering.ReplayOptions{})
		if err != nil {
			t.Fatal(err)
		}
		wantReplayed := 1
		if round == 1 {
			wantReplayed = 0
		}
		if sum.Matched != 3 || sum.Replayed != wantReplayed || sum.AlreadyReplayed != 1+round || sum.Skipped != 1 {
			t.Fatalf("round %d: %+v", round, sum)
		}
	}
	if n := len(f.k.records(t, events.TopicMetering)); n != 2 {
		t.Fatalf("replay twice re-drove twice: %d records", n)
	}
	cmds := f.k.records(t, events.TopicCommands)
	if len(cmds) != 2 || cmds[1].Partition != 2 || string(cmds[1].Key) != "globex" {
		t.Fatalf("commands %+v", cmds)
	}
	if n := len(f.k.records(t, events.TopicEvents)); n != 1 {
		t.Fatalf("a protected topic was written: %d", n)
	}
	for _, r := range f.list(t, metering.DLQFilter{}) {
		if r.Replayed != (r.SourceTopic != events.TopicEvents) {
			t.Errorf("listed %s replayed=%v", r.SourceTopic, r.Replayed)
		}
	}

	// Forced into the protected topic: the key comes from the source record,
	// since the watermill DLQ record has none.
	sum, err = f.dlq.Replay(ctx, metering.ReplayOptions{AllowProtected: true})
	if err != nil || sum.Replayed != 1 || sum.AlreadyReplayed != 2 {
		t.Fatalf("allow protected: %+v %v", sum, err)
	}
	evs := f.k.records(t, events.TopicEvents)
	if len(evs) != 2 || string(evs[1].Key) != "acme" || evs[1].Partition != 1 {
		t.Fatalf("events %+v", evs)
	}
	h = map[string]string{}
	for _, x := range evs[1].Headers {
		h[x.Key] = string(x.Value)
	}
	if h["_watermill_message_uuid"] != "uuid-1" || h[middleware.ReasonForPoisonedKey] != "" || h[metering.HeaderAttempt] != "2" {
		t.Fatalf("headers %v", h)
	}

	// A re-driven record that fails again comes back with attempt 2 and can
	// be replayed again (a new DLQ offset), to attempt 3.
	again := metering.DeadLetter(recs[1], "still bad")
	cl := f.k.client(t)
	if err := cl.ProduceSync(ctx, again).FirstErr(); err != nil {
		t.Fatal(err)
	}
	sum, err = f.dlq.Replay(ctx, metering.ReplayOptions{Filter: metering.DLQFilter{Reason: "still bad"}})
	if err != nil || sum.Replayed != 1 || sum.Items[0].Attempt != 3 {
		t.Fatalf("second failure: %+v %v", sum, err)
	}
}

func TestParseDLQRecordReason(t *testing.T) {
	for _, tc := range []struct {
		headers map[string]string
		want    string
	}{
		{map[string]string{"reason": "invalid_quantity"}, "invalid_quantity"},
		{map[string]string{middleware.ReasonForPoisonedKey: "boom"}, "boom"},
		{map[string]string{"reason": "invalid_quantity", middleware.ReasonForPoisonedKey: "cogs: poison: x"}, "invalid_quantity: cogs: poison: x"},
		{map[string]string{"reason": "invalid_quantity", middleware.ReasonForPoisonedKey: "cogs: invalid_quantity: x"}, "cogs: invalid_quantity: x"},
	} {
		rec := &kgo.Record{}
		for k, v := range tc.headers {
			rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
		}
		if got := metering.ParseDLQRecord(rec).Reason; got != tc.want {
			t.Errorf("%v: reason %q, want %q", tc.headers, got, tc.want)
		}
	}
}
