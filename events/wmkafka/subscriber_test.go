package wmkafka_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events/wmkafka"
)

const waitFor = 10 * time.Second

func receive(t *testing.T, msgs <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case msg, ok := <-msgs:
		if !ok {
			t.Fatal("messages channel closed")
		}
		return msg
	case <-time.After(waitFor):
		t.Fatal("no message within", waitFor)
		return nil
	}
}

func expectNothing(t *testing.T, msgs <-chan *message.Message, d time.Duration) {
	t.Helper()
	select {
	case msg, ok := <-msgs:
		if ok {
			t.Fatalf("unexpected message %s (payload %q)", msg.UUID, msg.Payload)
		}
	case <-time.After(d):
	}
}

func publishN(t *testing.T, pub message.Publisher, topic string, n int, meta func(i int) message.Metadata) []*message.Message {
	t.Helper()
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(strconv.Itoa(i)))
		if meta != nil {
			msgs[i].Metadata = meta(i)
		}
	}
	if err := pub.Publish(topic, msgs...); err != nil {
		t.Fatalf("publish: %v", err)
	}
	return msgs
}

func ensureTopic(t *testing.T, sub *wmkafka.Subscriber, topic string) {
	t.Helper()
	if err := sub.SubscribeInitialize(topic); err != nil {
		t.Fatal(err)
	}
}

func committedOffset(t *testing.T, brokers []string, group, topic string, partition int32) int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	offsets, err := kadm.NewClient(cl).FetchOffsets(ctx, group)
	if err != nil {
		t.Fatalf("fetch offsets: %v", err)
	}
	o, ok := offsets.Lookup(topic, partition)
	if !ok {
		return -1
	}
	if o.Err != nil {
		t.Fatalf("fetch offsets: %v", o.Err)
	}
	return o.At
}

// A nacked message comes back (same UUID, same offset) before anything after
// it, and the partition moves on only after the Ack.
func TestNackRedeliversSameMessageFirst(t *testing.T) {
	brokers := startBroker(t, 1)
	topic := "nack-" + watermill.NewShortUUID()
	pub := newTestPublisher(t, brokers, wmkafka.PublisherConfig{})
	defer pub.Close()
	sub := newTestSubscriber(t, brokers, wmkafka.SubscriberConfig{
		ConsumerGroup:    "g-" + watermill.NewShortUUID(),
		InitializeTopics: true,
		NackResendSleep:  50 * time.Millisecond,
	})
	defer sub.Close()
	ensureTopic(t, sub, topic)

	sent := publishN(t, pub, topic, 3, nil)
	msgs, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}

	first := receive(t, msgs)
	if first.UUID != sent[0].UUID {
		t.Fatalf("first message %s, want %s", first.UUID, sent[0].UUID)
	}
	firstOffset, _ := wmkafka.MessagePartitionOffsetFromCtx(first.Context())
	for i := 0; i < 2; i++ {
		nackedAt := time.Now()
		first.Nack()
		again := receive(t, msgs)
		if again.UUID != sent[0].UUID {
			t.Fatalf("after nack %d got %s, want %s again", i+1, again.UUID, sent[0].UUID)
		}
		if waited := time.Since(nackedAt); waited < 50*time.Millisecond {
			t.Errorf("redelivered after %v, want at least NackResendSleep (50ms)", waited)
		}
		if off, _ := wmkafka.MessagePartitionOffsetFromCtx(again.Context()); off != firstOffset {
			t.Errorf("redelivered offset %d, want %d", off, firstOffset)
		}
		if first.Context().Err() == nil {
			t.Error("context of a nacked delivery should be canceled")
		}
		first = again
	}
	first.Ack()

	for _, want := range sent[1:] {
		got := receive(t, msgs)
		if got.UUID != want.UUID {
			t.Fatalf("got %s, want %s", got.UUID, want.UUID)
		}
		got.Ack()
	}
}

// Offsets of unacknowledged messages are never committed: after a close, the
// group continues at the first message that was not acked, even though later
// messages had been fetched (and one had been delivered).
func TestUnackedMessagesAreNotCommitted(t *testing.T) {
	brokers := startBroker(t, 1)
	topic := "unacked-" + watermill.NewShortUUID()
	group := "g-" + watermill.NewShortUUID()
	pub := newTestPublisher(t, brokers, wmkafka.PublisherConfig{})
	defer pub.Close()

	sub1 := newTestSubscriber(t, brokers, wmkafka.SubscriberConfig{ConsumerGroup: group, InitializeTopics: true})
	ensureTopic(t, sub1, topic)
	sent := publishN(t, pub, topic, 10, nil)

	msgs, err := sub1.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		msg := receive(t, msgs)
		if msg.UUID != sent[i].UUID {
			t.Fatalf("message %d: got %s, want %s", i, msg.UUID, sent[i].UUID)
		}
		msg.Ack()
	}
	held := receive(t, msgs) // delivered, never acked
	if held.UUID != sent[3].UUID {
		t.Fatalf("got %s, want %s", held.UUID, sent[3].UUID)
	}
	// Let periodic commits run while the message is held: they must stop at 3.
	time.Sleep(300 * time.Millisecond)
	if got := committedOffset(t, brokers, group, topic, 0); got != 3 {
		t.Errorf("committed offset while holding message 3: %d, want 3", got)
	}

	if err := sub1.Close(); err != nil {
		t.Fatal(err)
	}
	if held.Context().Err() == nil {
		t.Error("context of an unacked message should be canceled by Close")
	}
	if _, open := <-msgs; open {
		t.Error("messages channel should be closed after Close")
	}
	held.Ack() // too late: the subscription is gone
	if got := committedOffset(t, brokers, group, topic, 0); got != 3 {
		t.Fatalf("committed offset after close: %d, want 3", got)
	}

	sub2 := newTestSubscriber(t, brokers, wmkafka.SubscriberConfig{ConsumerGroup: group})
	defer sub2.Close()
	msgs2, err := sub2.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range sent[3:] {
		got := receive(t, msgs2)
		if got.UUID != want.UUID {
			t.Fatalf("after restart got %s, want %s", got.UUID, want.UUID)
		}
		got.Ack()
	}
	if err := sub2.Close(); err != nil {
		t.Fatal(err)
	}
	if got := committedOffset(t, brokers, group, topic, 0); got != 10 {
		t.Fatalf("committed offset at the end: %d, want 10", got)
	}
}

// Canceling the Subscribe context ends only that subscription: its channel
// closes, unacked work is not committed, and the Subscriber keeps working.
func TestSubscribeContextCancelEndsOnlyThatSubscription(t *testing.T) {
	brokers := startBroker(t, 1)
	topic := "ctx-" + watermill.NewShortUUID()
	group := "g-" + watermill.NewShortUUID()
	pub := newTestPublisher(t, brokers, wmkafka.PublisherConfig{})
	defer pub.Close()
	sub := newTestSubscriber(t, brokers, wmkafka.SubscriberConfig{ConsumerGroup: group, InitializeTopics: true})
	defer sub.Close()
	ensureTopic(t, sub, topic)

	sent := publishN(t, pub, topic, 2, nil)
	ctx, cancel := context.WithCancel(context.Background())
	msgs, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	held := receive(t, msgs)
	cancel()
	select {
	case <-held.Context().Done():
	case <-time.After(waitFor):
		t.Fatal("message context not canceled with the Subscribe context")
	}
	for range msgs { // drains until closed
	}

	msgs, err = sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range sent {
		got := receive(t, msgs)
		if got.UUID != want.UUID {
			t.Fatalf("got %s, want %s", got.UUID, want.UUID)
		}
		got.Ack()
	}
}

func TestMessageContextCarriesRecord(t *testing.T) {
	brokers := startBroker(t, 1)
	topic := "meta-" + watermill.NewShortUUID()
	pub := newTestPublisher(t, brokers, wmkafka.PublisherConfig{Key: wmkafka.KeyFromMetadata("partition_key")})
	defer pub.Close()
	sub := newTestSubscriber(t, brokers, wmkafka.SubscriberConfig{
		ConsumerGroup:    "g-" + watermill.NewShortUUID(),
		InitializeTopics: true,
		Partitions:       3,
	})
	defer sub.Close()
	ensureTopic(t, sub, topic)

	before := time.Now().Add(-time.Second)
	sent := publishN(t, pub, topic, 2, func(i int) message.Metadata {
		return message.Metadata{"partition_key": "tenant-a", "n": strconv.Itoa(i)}
	})
	msgs, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}

	var partition int32 = -1
	for i, want := range sent {
		got := receive(t, msgs)
		ctx := got.Context()
		if got.UUID != want.UUID || got.Metadata.Get("n") != strconv.Itoa(i) || got.Metadata.Get("partition_key") != "tenant-a" {
			t.Fatalf("got %s %v, want %s %v", got.UUID, got.Metadata, want.UUID, want.Metadata)
		}
		if _, ok := got.Metadata[wmkafka.UUIDHeaderKey]; ok {
			t.Error("the UUID header must not leak into metadata")
		}
		p, ok := wmkafka.MessagePartitionFromCtx(ctx)
		if !ok || (partition >= 0 && p != partition) {
			t.Errorf("partition %d (%v): same key must stay on partition %d", p, ok, partition)
		}
		partition = p
		if off, ok := wmkafka.MessagePartitionOffsetFromCtx(ctx); !ok || off != int64(i) {
			t.Errorf("offset %d (%v), want %d", off, ok, i)
		}
		if ts, ok := wmkafka.MessageTimestampFromCtx(ctx); !ok || ts.Before(before) || ts.After(time.Now().Add(time.Second)) {
			t.Errorf("timestamp %v (%v) out of range", ts, ok)
		}
		if key, ok := wmkafka.MessageKeyFromCtx(ctx); !ok || string(key) != "tenant-a" {
			t.Errorf("key %q (%v), want tenant-a", key, ok)
		}
		if tp, ok := wmkafka.MessageTopicFromCtx(ctx); !ok || tp != topic {
			t.Errorf("topic %q (%v), want %q", tp, ok, topic)
		}
		got.Ack()
		select {
		case <-ctx.Done():
		case <-time.After(waitFor):
			t.Fatal("message context not canceled after Ack")
		}
	}
	if _, ok := wmkafka.MessagePartitionFromCtx(context.Background()); ok {
		t.Error("a plain context has no partition")
	}
}

// partitionMarshaler places each record on the partition named by its
// "partition" metadata (with kgo.ManualPartitioner).
type partitionMarshaler struct{ wmkafka.DefaultMarshaler }

func (m partitionMarshaler) Marshal(topic string, msg *message.Message) (*kgo.Record, error) {
	rec, err := m.DefaultMarshaler.Marshal(topic, msg)
	if err != nil {
		return nil, err
	}
	p, err := strconv.Atoi(msg.Metadata.Get("partition"))
	if err != nil {
		return nil, fmt.Errorf("partition metadata: %w", err)
	}
	rec.Partition = int32(p)
	return rec, nil
}

// A message held unacked blocks only its own partition; a partition whose
// buffer fills up is paused and later resumed without losing or reordering
// records.
func TestPartitionsAreIndependentAndBackpressured(t *testing.T) {
	brokers := startBroker(t, 1)
	topic := "parts-" + watermill.NewShortUUID()
	pub := newTestPublisher(t, brokers, wmkafka.PublisherConfig{
		Marshaler:  partitionMarshaler{},
		ClientOpts: []kgo.Opt{kgo.RecordPartitioner(kgo.ManualPartitioner())},
	})
	defer pub.Close()
	sub := newTestSubscriber(t, brokers, wmkafka.SubscriberConfig{
		ConsumerGroup:      "g-" + watermill.NewShortUUID(),
		InitializeTopics:   true,
		Partitions:         2,
		MaxBufferedRecords: 4,
	})
	defer sub.Close()
	ensureTopic(t, sub, topic)

	const perPartition = 60
	onPartition := func(p int) func(int) message.Metadata {
		return func(int) message.Metadata { return message.Metadata{"partition": strconv.Itoa(p)} }
	}
	sent0 := publishN(t, pub, topic, perPartition, onPartition(0))
	sent1 := publishN(t, pub, topic, perPartition, onPartition(1))

	msgs, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}

	var held *message.Message
	var got1 []string
	for held == nil || len(got1) < perPartition {
		msg := receive(t, msgs)
		p, _ := wmkafka.MessagePartitionFromCtx(msg.Context())
		switch {
		case p == 0 && held == nil:
			held = msg // not acked: partition 0 must stall, partition 1 must not
		case p == 1:
			got1 = append(got1, msg.UUID)
			msg.Ack()
		default:
			t.Fatalf("partition 0 delivered %s while %s was unacked", msg.UUID, held.UUID)
		}
	}
	expectNothing(t, msgs, 200*time.Millisecond)
	if held.UUID != sent0[0].UUID {
		t.Fatalf("first of partition 0: %s, want %s", held.UUID, sent0[0].UUID)
	}
	for i, want := range sent1 {
		if got1[i] != want.UUID {
			t.Fatalf("partition 1 message %d: %s, want %s", i, got1[i], want.UUID)
		}
	}

	// More records for the paused, stalled partition: fetched after resume.
	sent0 = append(sent0, publishN(t, pub, topic, perPartition, onPartition(0))...)
	held.Ack()
	for _, want := range sent0[1:] {
		got := receive(t, msgs)
		if got.UUID != want.UUID {
			t.Fatalf("partition 0: got %s, want %s", got.UUID, want.UUID)
		}
		got.Ack()
	}
}

// Two subscriptions of one group share four partitions while messages flow;
// whatever rebalancing happens, each key's messages arrive in publish order
// (a replay after a rebalance may repeat, never skip) and none is lost.
func TestPerKeyOrderAcrossPartitionsAndMembers(t *testing.T) {
	brokers := startBroker(t, 1)
	topic := "order-" + watermill.NewShortUUID()
	group := "g-" + watermill.NewShortUUID()
	pub := newTestPublisher(t, brokers, wmkafka.PublisherConfig{Key: wmkafka.KeyFromMetadata("key")})
	defer pub.Close()
	sub := newTestSubscriber(t, brokers, wmkafka.SubscriberConfig{
		ConsumerGroup:    group,
		InitializeTopics: true,
		Partitions:       4,
	})
	defer sub.Close()

	const keys, perKey = 8, 50 // tenant-0..7 hash to all four partitions
	var (
		mu   sync.Mutex
		last = map[string]int{}
		seen = map[string]bool{}
	)
	done := make(chan struct{})
	var secondMember sync.WaitGroup
	received := make([]int, 2)
	consume := func(member int, msgs <-chan *message.Message) {
		defer secondMember.Done()
		for msg := range msgs {
			time.Sleep(3 * time.Millisecond) // slow enough that the second member joins mid-stream
			key := msg.Metadata.Get("key")
			n, _ := strconv.Atoi(msg.Metadata.Get("n"))
			mu.Lock()
			prev, ok := last[key]
			if !ok {
				prev = -1
			}
			if n > prev+1 {
				t.Errorf("key %s: got %d after %d (skipped)", key, n, prev)
			}
			last[key] = n
			seen[msg.UUID] = true
			received[member]++
			complete := len(seen) == keys*perKey
			mu.Unlock()
			msg.Ack()
			if complete {
				close(done)
			}
		}
	}

	msgs1, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	secondMember.Add(1)
	go consume(0, msgs1)

	var wg sync.WaitGroup
	for k := 0; k < keys; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < perKey; n++ {
				msg := message.NewMessage(watermill.NewUUID(), nil)
				msg.Metadata = message.Metadata{"key": "tenant-" + strconv.Itoa(k), "n": strconv.Itoa(n)}
				if err := pub.Publish(topic, msg); err != nil {
					t.Error(err)
					return
				}
				if n == perKey/10 && k == 0 {
					// a second member joins mid-stream: partitions move
					msgs2, err := sub.Subscribe(context.Background(), topic)
					if err != nil {
						t.Error(err)
						return
					}
					secondMember.Add(1)
					go consume(1, msgs2)
				}
			}
		}()
	}
	wg.Wait()

	select {
	case <-done:
	case <-time.After(30 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("received %d of %d messages", len(seen), keys*perKey)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	secondMember.Wait()
	if received[1] == 0 {
		t.Errorf("the second member got no partition (received %v): no rebalance was exercised", received)
	}
	t.Logf("deliveries per member: %v (for %d messages)", received, keys*perKey)
}

func TestCloseIsIdempotentAndLeavesNoGoroutines(t *testing.T) {
	brokers := startBroker(t, 1)
	topic := "close-" + watermill.NewShortUUID()
	time.Sleep(100 * time.Millisecond)
	baseline := runtime.NumGoroutine()

	pub := newTestPublisher(t, brokers, wmkafka.PublisherConfig{})
	sub := newTestSubscriber(t, brokers, wmkafka.SubscriberConfig{
		ConsumerGroup:    "g-" + watermill.NewShortUUID(),
		InitializeTopics: true,
		Partitions:       2,
	})
	ensureTopic(t, sub, topic)
	publishN(t, pub, topic, 5, nil)
	msgs1, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	msgs2, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	// Whichever member owns the records' partition delivers them.
	receiveAny := func() *message.Message {
		select {
		case msg := <-msgs1:
			return msg
		case msg := <-msgs2:
			return msg
		case <-time.After(waitFor):
			t.Fatal("no message within", waitFor)
			return nil
		}
	}
	receiveAny().Ack()
	_ = receiveAny() // left unacked: Close must not wait for it

	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(2)
		go func() { defer wg.Done(); _ = sub.Close() }()
		go func() { defer wg.Done(); _ = pub.Close() }()
	}
	wg.Wait()
	if err := sub.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := pub.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, ch := range []<-chan *message.Message{msgs1, msgs2} {
		for range ch { // must be closed (ranging ends)
		}
	}
	if _, err := sub.Subscribe(context.Background(), topic); !errors.Is(err, wmkafka.ErrSubscriberClosed) {
		t.Errorf("Subscribe after Close: %v, want ErrSubscriberClosed", err)
	}
	if err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), nil)); !errors.Is(err, wmkafka.ErrPublisherClosed) {
		t.Errorf("Publish after Close: %v, want ErrPublisherClosed", err)
	}

	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after close, %d before:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
}

func TestConfigValidate(t *testing.T) {
	if _, err := wmkafka.NewPublisher(wmkafka.PublisherConfig{}); err == nil {
		t.Error("publisher without brokers: want error")
	}
	_, err := wmkafka.NewSubscriber(wmkafka.SubscriberConfig{NackResendSleep: -5})
	if err == nil {
		t.Fatal("empty subscriber config: want error")
	}
	for _, want := range []string{"brokers", "consumer group", "nack resend sleep"} {
		if !containsFold(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if err := (wmkafka.SubscriberConfig{Brokers: []string{"x:1"}, ConsumerGroup: "g", NackResendSleep: wmkafka.NoSleep}).Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

func containsFold(s, sub string) bool {
	return len(sub) == 0 || (len(s) >= len(sub) && (s[:len(sub)] == sub || containsFold(s[1:], sub)))
}
