package ledger

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

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/stores"
)

type env struct {
	t       testing.TB
	ctx     context.Context
	cluster *kfake.Cluster
	brokers []string
	pool    *pgxpool.Pool
	cl      *kgo.Client
	signer  *events.Signer
	cpKey   ed25519.PrivateKey
	chains  map[string]*chainGen
}

func newEnv(t testing.TB, opts ...kfake.Opt) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(3, events.TopicEvents)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	pool, err := stores.EnsurePostgres(ctx, stores.TestPostgres(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.ProducerBatchMaxBytes(4<<20), kgo.MaxBufferedRecords(200000))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	_, sk, _ := ed25519.GenerateKey(rand.Reader)
	_, ck, _ := ed25519.GenerateKey(rand.Reader)
	return &env{t: t, ctx: ctx, cluster: c, brokers: c.ListenAddrs(), pool: pool, cl: cl, signer: events.NewSigner(sk), cpKey: ck, chains: map[string]*chainGen{}}
}

type chainGen struct {
	chain events.Chain
	n     int
}

// receipt builds tenant's next receipt (or one with seq/prev overridden).
func (e *env) receipt(tenant string, mutate func(*events.Receipt)) []byte {
	g := e.chains[tenant]
	if g == nil {
		g = &chainGen{chain: events.NewChain()}
		e.chains[tenant] = g
	}
	g.n++
	seq, prev := g.chain.Next()
	r := events.Receipt{
		ID: fmt.Sprintf("rcpt_%s_%d_%d", tenant, seq, g.n), Action: "entity.create", Actor: "user:alice", Tenant: tenant,
		Decision: events.DecisionAllow, EvidenceHash: events.EvidenceHash([]byte("{}")), PolicyVersion: "1.0.0+sha256:abc",
		CreatedAt: time.Date(2026, 1, 1, 0, 0, 0, int(seq), time.UTC), Selective: map[string]string{}, Seq: seq, PrevHash: prev,
		CommandID: fmt.Sprintf("cmd_%s_%d", tenant, g.n), Rationale: json.RawMessage(`[]`), Obligations: json.RawMessage(`[]`),
		Subject: "svc:" + tenant, Command: json.RawMessage(`{"type":"entity.create"}`), Change: json.RawMessage(`null`),
	}
	if seq%2 == 0 {
		r.Actor = "user:bob"
		r.Action = "relation.link"
	}
	if mutate != nil {
		mutate(&r)
	}
	payload, err := events.MarshalReceipt(r)
	if err != nil {
		e.t.Fatal(err)
	}
	if r.Seq == seq && r.PrevHash == prev {
		if err := g.chain.Append(r, payload); err != nil {
			e.t.Fatal(err)
		}
	}
	v, err := e.signer.Sign(payload).Marshal()
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

func (e *env) produce(tenant string, values ...[]byte) {
	e.t.Helper()
	recs := make([]*kgo.Record, len(values))
	for i, v := range values {
		recs[i] = &kgo.Record{Topic: events.TopicEvents, Key: []byte(tenant), Value: v}
	}
	if err := e.cl.ProduceSync(e.ctx, recs...).FirstErr(); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) produceChain(tenant string, n int) {
	vals := make([][]byte, n)
	for i := range vals {
		vals[i] = e.receipt(tenant, nil)
	}
	e.produce(tenant, vals...)
}

func (e *env) projector(reg prometheus.Registerer) *Projector {
	e.t.Helper()
	p, err := NewProjector(Config{Brokers: e.brokers, Pool: e.pool, Signer: CheckpointSigner{Name: "companyos-ledger", Key: e.cpKey},
		CheckpointInterval: time.Hour, MaxWait: 50 * time.Millisecond, Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// runUntil runs p until cond holds (or the run fails), then stops it.
func (e *env) runUntil(p *Projector, cond func() bool) error {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	deadline := time.After(2 * time.Minute)
	for {
		select {
		case err := <-done:
			cancel()
			return err
		case <-deadline:
			cancel()
			<-done
			e.t.Fatal("projector did not reach the expected state")
		case <-time.After(20 * time.Millisecond):
			if cond() {
				cancel()
				return <-done
			}
		}
	}
}

// caughtUp reports whether the stored positions reached every partition's
// last stable offset.
func (e *env) caughtUp() bool {
	ends, err := kadm.NewClient(e.cl).ListCommittedOffsets(e.ctx, events.TopicEvents)
	if err != nil {
		return false
	}
	ok := true
	ends.Each(func(o kadm.ListedOffset) {
		var next int64 = -1
		_ = e.pool.QueryRow(e.ctx, "SELECT next_offset FROM ledger_positions WHERE partition = $1", o.Partition).Scan(&next)
		if o.Offset > 0 && next < o.Offset {
			ok = false
		}
	})
	return ok
}

func (e *env) count(q string, args ...any) int64 {
	e.t.Helper()
	var n int64
	if err := e.pool.QueryRow(e.ctx, q, args...).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}
