package commands

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/policy"
)

type allowAll struct{}

func (allowAll) Decide(context.Context, policy.Input) policy.Decision {
	return policy.Decision{Allow: true, PolicyVersion: "test"}
}
func (allowAll) Version() string { return "test" }

func newTestProcessor(t *testing.T, now time.Time) *Processor {
	t.Helper()
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	p, err := NewProcessor(ProcessorConfig{Brokers: []string{"x:1"}, InstanceID: "t", Signer: events.NewSigner(k),
		Policy: allowAll{}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func commandRecord(t *testing.T, req Request) *kgo.Record {
	t.Helper()
	v, _ := json.Marshal(req)
	return &kgo.Record{Topic: events.TopicCommands, Partition: 2, Value: v}
}

// A command whose request deadline passed is answered 504 and not executed;
// the same command id within its deadline is executed exactly once.
func TestProcessorHandleDeadlineAndDedupe(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	p := newTestProcessor(t, now)
	ps := &partitionState{loaded: true, tenants: map[string]*TenantState{}}
	var out []*kgo.Record
	produce := func(r *kgo.Record) { out = append(out, r) }
	cmd := json.RawMessage(`{"tenant":"t1","type":"entity.create","payload":{"id":"svc:A","kind":"service"}}`)
	req := Request{RequestID: "req_1", CommandID: "cmd_1", Principal: Principal{ID: "user:a"}, Command: cmd, Deadline: now.Add(-time.Second)}

	if d := p.handle(context.Background(), ps, commandRecord(t, req), produce); d != "" {
		t.Fatalf("expired command decided: %s", d)
	}
	if len(out) != 1 || out[0].Topic != events.TopicReplies {
		t.Fatalf("want one reply, got %d records", len(out))
	}
	var rep Reply
	_ = json.Unmarshal(out[0].Value, &rep)
	if rep.Status != 504 || rep.ReceiptID != "" {
		t.Fatalf("reply %+v", rep)
	}

	out = nil
	req.RequestID, req.Deadline = "req_2", now.Add(time.Second)
	if d := p.handle(context.Background(), ps, commandRecord(t, req), produce); d != events.DecisionAllow {
		t.Fatalf("decision %q", d)
	}
	if len(out) != 2 || out[0].Topic != events.TopicEvents || out[0].Partition != 2 {
		t.Fatalf("want receipt on the command's partition + reply, got %+v", out)
	}
	// Redelivery of the same command id appends nothing and replays.
	out = nil
	req.RequestID = "req_3"
	if d := p.handle(context.Background(), ps, commandRecord(t, req), produce); d != "" {
		t.Fatal("redelivered command decided twice")
	}
	_ = json.Unmarshal(out[0].Value, &rep)
	if len(out) != 1 || !rep.Replayed || rep.Status != 201 {
		t.Fatalf("replay %+v (%d records)", rep, len(out))
	}
	// A malformed record goes to the DLQ.
	out = nil
	p.handle(context.Background(), ps, &kgo.Record{Topic: events.TopicCommands, Value: []byte("garbage")}, produce)
	if len(out) != 1 || out[0].Topic != events.TopicDLQ {
		t.Fatalf("malformed record: %+v", out)
	}
}
