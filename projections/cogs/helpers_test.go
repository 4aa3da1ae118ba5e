package cogs

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/stores"
	"github.com/companyos/companyos/metering"
)

// env is one test's world: an embedded Kafka broker reached over TCP, a
// fresh ClickHouse database (migrated), a producer and a receipt signer.
type env struct {
	t       testing.TB
	ctx     context.Context
	brokers []string
	conn    driver.Conn
	addr    string
	db      string
	cl      *kgo.Client
	signer  *events.Signer
	chains  map[string]*events.Chain
	n       int
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	c, err := kfake.NewCluster(kfake.NumBrokers(1),
		kfake.SeedTopics(3, events.TopicMetering), kfake.SeedTopics(2, events.TopicEvents), kfake.SeedTopics(1, events.TopicDLQ))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	addr, db := stores.TestClickHouse(t)
	conn, err := stores.EnsureClickHouse(ctx, addr, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ProducerLinger(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	_, sk, _ := ed25519.GenerateKey(rand.Reader)
	return &env{t: t, ctx: ctx, brokers: c.ListenAddrs(), conn: conn, addr: addr, db: db, cl: cl,
		signer: events.NewSigner(sk), chains: map[string]*events.Chain{}}
}

func ts(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

// ev is a metering event for the tests.
type ev struct {
	tenant, id, at, meter, qty, unit string
	tags                             map[string]string
}

func (e *env) eventJSON(x ev) []byte {
	e.t.Helper()
	if x.meter == "" {
		x.meter = "compute.cpu_seconds"
	}
	if x.unit == "" {
		x.unit = "second"
	}
	b, err := json.Marshal(metering.Event{SpecVersion: "1.0", ID: x.id, Source: "test/agent", Type: x.meter, Subject: x.tenant,
		Time: ts(x.at), DataContentType: "application/json", Data: metering.Data{Quantity: x.qty, Unit: x.unit, Tags: x.tags}})
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// produce writes metering records; the key is the tenant (nil for "").
func (e *env) produce(recs ...*kgo.Record) {
	e.t.Helper()
	if err := e.cl.ProduceSync(e.ctx, recs...).FirstErr(); err != nil {
		e.t.Fatal(err)
	}
}

func meteringRecord(key string, value []byte) *kgo.Record {
	r := &kgo.Record{Topic: events.TopicMetering, Value: value}
	if key != "" {
		r.Key = []byte(key)
	}
	return r
}

func (e *env) produceEvents(xs ...ev) {
	e.t.Helper()
	recs := make([]*kgo.Record, len(xs))
	for i, x := range xs {
		recs[i] = meteringRecord(x.tenant, e.eventJSON(x))
	}
	e.produce(recs...)
}

// priceReceipt builds a signed receipt of a pricing.set command on the
// "finance" chain.
func (e *env) priceReceipt(ps PriceSet, mutate func(*events.Receipt)) []byte {
	e.t.Helper()
	const tenant = "finance"
	ch := e.chains[tenant]
	if ch == nil {
		c := events.NewChain()
		ch = &c
		e.chains[tenant] = ch
	}
	e.n++
	seq, prev := ch.Next()
	payload, _ := json.Marshal(ps)
	cmd, _ := json.Marshal(map[string]any{"type": ActionPricingSet, "payload": json.RawMessage(payload)})
	r := events.Receipt{ID: fmt.Sprintf("rcpt_price_%d", e.n), Action: ActionPricingSet, Actor: "user:cfo", Tenant: tenant,
		Decision: events.DecisionAllow, EvidenceHash: events.EvidenceHash([]byte("{}")), PolicyVersion: "1.0.0",
		CreatedAt: time.Date(2026, 1, 1, 0, 0, e.n, 0, time.UTC), Selective: map[string]string{}, Seq: seq, PrevHash: prev,
		CommandID: fmt.Sprintf("cmd_price_%d", e.n), Rationale: json.RawMessage(`[]`), Obligations: json.RawMessage(`[]`),
		Subject: "price:" + ps.Meter, Command: cmd, Change: json.RawMessage(`null`)}
	if mutate != nil {
		mutate(&r)
	}
	p, err := events.MarshalReceipt(r)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := ch.Append(r, p); err != nil {
		e.t.Fatal(err)
	}
	v, err := e.signer.Sign(p).Marshal()
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

func (e *env) producePrices(pss ...PriceSet) {
	e.t.Helper()
	for _, ps := range pss {
		e.produce(&kgo.Record{Topic: events.TopicEvents, Key: []byte("finance"), Value: e.priceReceipt(ps, nil)})
	}
}

func (e *env) projector(reg prometheus.Registerer, mutate func(*Config)) *Projector {
	e.t.Helper()
	cfg := Config{Brokers: e.brokers, Conn: e.conn, BatchSize: 500, FlushInterval: 50 * time.Millisecond,
		AnomalyInterval: -1, Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))}
	if mutate != nil {
		mutate(&cfg)
	}
	p, err := NewProjector(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// runUntil runs p until cond holds, then stops it and returns Run's error;
// it also returns when Run ends by itself.
func (e *env) runUntil(p *Projector, cond func() bool) error {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	deadline := time.After(2 * time.Minute)
	for {
		select {
		case err := <-done:
			return err
		case <-deadline:
			cancel()
			<-done
			e.t.Fatal("projector did not reach the expected state")
		case <-time.After(25 * time.Millisecond):
			if cond() {
				cancel()
				return <-done
			}
		}
	}
}

// caughtUp reports whether the positions stored in ClickHouse reached the
// end of both consumed topics.
func (e *env) caughtUp() bool {
	adm := kadm.NewClient(e.cl)
	ends, err := adm.ListEndOffsets(e.ctx, events.TopicMetering, events.TopicEvents)
	if err != nil {
		return false
	}
	stored, _, err := (&store{conn: e.conn}).positions(e.ctx)
	if err != nil {
		return false
	}
	ok := true
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 && stored[topicPartition{o.Topic, o.Partition}] < o.Offset {
			ok = false
		}
	})
	return ok
}

// sync runs a fresh projector until it has caught up.
func (e *env) sync() {
	e.t.Helper()
	if err := e.runUntil(e.projector(nil, nil), e.caughtUp); err != nil {
		e.t.Fatal(err)
	}
}

// forgetPositions makes the next projector replay both topics from the
// start.
func (e *env) forgetPositions() {
	e.t.Helper()
	if err := e.conn.Exec(e.ctx, "TRUNCATE TABLE cogs_positions"); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) count(q string) uint64 {
	e.t.Helper()
	var n uint64
	if err := e.conn.QueryRow(e.ctx, q).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// rows runs SQL and returns the rows as text.
func (e *env) rows(q string) [][]string {
	e.t.Helper()
	r, err := runText(e.ctx, e.conn, q)
	if err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
	return r.Rows
}

func (e *env) query(name string) [][]string {
	e.t.Helper()
	r, err := RunQuery(e.ctx, e.conn, name)
	if err != nil {
		e.t.Fatalf("%s: %v", name, err)
	}
	return r.Rows
}

// costs returns cost_per_tenant_day as "tenant day" → cost.
func (e *env) costs() map[string]string {
	e.t.Helper()
	rs, err := CostPerTenantDay(e.ctx, e.conn)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range rs {
		out[r.Tenant+" "+r.Day.Format("2006-01-02")] = r.Cost.String()
	}
	return out
}

func assertRows(t testing.TB, name string, got, want [][]string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s:\n got  %v\n want %v", name, got, want)
	}
}

func assertMap(t testing.TB, name string, got, want map[string]string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s:\n got  %v\n want %v", name, got, want)
	}
}

// basePrices are a simple catalog: cpu 0.5/s from 2026-01-01, storage
// 0.002/gb-hour.
var basePrices = []PriceSet{
	{Meter: "compute.cpu_seconds", Unit: "second", Region: "*", Currency: "USD", UnitPrice: "0.5", EffectiveFrom: "2026-01-01T00:00:00Z"},
	{Meter: "storage.gb_hours", Unit: "gb-hour", Currency: "USD", UnitPrice: "0.002", EffectiveFrom: "2025-01-01T00:00:00Z"},
}
