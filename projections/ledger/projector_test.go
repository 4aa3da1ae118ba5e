package ledger

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twmb/franz-go/pkg/kfake"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/events"
)

func TestMigrateIdempotentAndConcurrent(t *testing.T) {
	e := newEnv(t)
	errs := make(chan error, 4)
	for range 4 {
		go func() { errs <- Migrate(e.ctx, e.pool) }()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	ms, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if n := e.count("SELECT count(*) FROM schema_migrations"); n != int64(len(ms)) {
		t.Fatalf("schema_migrations has %d rows, want %d (one per migration)", n, len(ms))
	}
}

func TestProjectsReceiptsExactly(t *testing.T) {
	e := newEnv(t)
	e.produceChain("acme", 50)
	e.produceChain("globex", 30)
	reg := prometheus.NewRegistry()
	p := e.projector(reg)
	if err := e.runUntil(p, e.caughtUp); err != nil {
		t.Fatal(err)
	}
	if n := e.count("SELECT count(*) FROM receipts"); n != 80 {
		t.Fatalf("receipts = %d, want 80", n)
	}
	if n := e.count("SELECT count(*) FROM receipts WHERE tenant = 'acme' AND seq BETWEEN 1 AND 50"); n != 50 {
		t.Fatalf("acme receipts = %d", n)
	}
	h, err := p.Ledger().Head(e.ctx, "acme")
	if err != nil || h.Seq != 50 || h.TreeSize != 50 || h.Status != "ok" || h.HeadHash != e.chains["acme"].chain.Head {
		t.Fatalf("acme head = %+v, %v", h, err)
	}
	if got := metricValue(p.receipts); got != 80 {
		t.Fatalf("ledger_receipts_total = %v", got)
	}
	// The envelope is stored byte-exact and still verifies.
	r, err := p.Ledger().Receipt(e.ctx, "rcpt_acme_7_7")
	if err != nil {
		t.Fatal(err)
	}
	env, err := events.ParseEnvelope(r.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Verify(keySetOf(e)); err != nil {
		t.Fatal(err)
	}
	if r.Seq != 7 || r.PayloadHash != events.HashPayload(env.Payload) {
		t.Fatalf("receipt = %+v", r)
	}
	// The Merkle root equals one computed independently from the payloads.
	root, err := p.Ledger().TreeHash(e.ctx, "acme", 50)
	if err != nil {
		t.Fatal(err)
	}
	if want := independentRoot(t, e, "acme", 50); root != want {
		t.Fatalf("root %v, want %v", root, want)
	}
	// A final checkpoint was written at shutdown for each tenant.
	if n := e.count("SELECT count(*) FROM checkpoints"); n != 2 {
		t.Fatalf("checkpoints = %d, want 2", n)
	}
}

// independentRoot recomputes tenant's tree from the stored payloads with an
// in-memory tlog store.
func independentRoot(t *testing.T, e *env, tenant string, n int64) tlog.Hash {
	rows, err := e.pool.Query(e.ctx, "SELECT envelope FROM receipts WHERE tenant = $1 ORDER BY seq LIMIT $2", tenant, n)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var stored []tlog.Hash
	r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = stored[x]
		}
		return out, nil
	})
	var i int64
	for rows.Next() {
		var v []byte
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		env, _ := events.ParseEnvelope(v)
		hs, err := tlog.StoredHashes(i, env.Payload, r)
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, hs...)
		i++
	}
	h, err := tlog.TreeHash(n, r)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestDuplicateDeliveryIsNoOp(t *testing.T) {
	e := newEnv(t)
	vals := make([][]byte, 20)
	for i := range vals {
		vals[i] = e.receipt("acme", nil)
	}
	e.produce("acme", vals...)
	// The same records again (a producer retry / re-produce after an
	// ambiguous error), then the chain continues.
	e.produce("acme", vals[10:]...)
	e.produceChain("acme", 5)
	if err := e.runUntil(e.projector(nil), e.caughtUp); err != nil {
		t.Fatal(err)
	}
	// Run a second projector over the whole log from scratch positions.
	if _, err := e.pool.Exec(e.ctx, "DELETE FROM ledger_positions"); err != nil {
		t.Fatal(err)
	}
	if err := e.runUntil(e.projector(nil), e.caughtUp); err != nil {
		t.Fatal(err)
	}
	if n := e.count("SELECT count(*) FROM receipts"); n != 25 {
		t.Fatalf("receipts = %d, want 25", n)
	}
	h, _ := e.projector(nil).Ledger().Head(e.ctx, "acme")
	if h.Status != "ok" || h.Seq != 25 || h.TreeSize != 25 {
		t.Fatalf("head = %+v", h)
	}
	if n := e.count("SELECT count(*) FROM merkle_hashes WHERE tenant = 'acme'"); n != tlog.StoredHashCount(25) {
		t.Fatalf("merkle rows = %d, want %d", n, tlog.StoredHashCount(25))
	}
}

var errCrash = errors.New("simulated crash")

func TestCrashAfterCommitResumesFromStoredPositions(t *testing.T) {
	e := newEnv(t)
	e.produceChain("acme", 40)
	e.produceChain("globex", 40)
	p := e.projector(nil)
	p.afterCommit = func(b events.Batch) error {
		if len(b.Records) > 0 {
			return errCrash
		}
		return nil
	}
	if err := e.runUntil(p, func() bool { return false }); !errors.Is(err, errCrash) {
		t.Fatalf("run = %v, want the simulated crash", err)
	}
	first := e.count("SELECT count(*) FROM receipts")
	if first == 0 {
		t.Fatal("the first run committed nothing before crashing")
	}
	// Crash before commit: nothing of that batch may persist.
	p2 := e.projector(nil)
	p2.beforeCommit = func(b events.Batch) error {
		if len(b.Records) > 0 {
			return errCrash
		}
		return nil
	}
	if err := e.runUntil(p2, func() bool { return false }); !errors.Is(err, errCrash) {
		t.Fatalf("run = %v", err)
	}
	if n := e.count("SELECT count(*) FROM receipts"); n != first {
		t.Fatalf("rolled-back batch left rows: %d, want %d", n, first)
	}
	e.produceChain("acme", 10)
	if err := e.runUntil(e.projector(nil), e.caughtUp); err != nil {
		t.Fatal(err)
	}
	if n := e.count("SELECT count(*) FROM receipts"); n != 90 {
		t.Fatalf("receipts = %d, want 90", n)
	}
	if n := e.count("SELECT count(*) FROM tenant_heads WHERE status = 'ok'"); n != 2 {
		t.Fatalf("ok tenants = %d", n)
	}
}

func TestGapBreaksOnlyThatTenant(t *testing.T) {
	e := newEnv(t)
	e.produceChain("acme", 5)
	e.produceChain("globex", 5)
	// acme skips seq 6.
	gap := e.receipt("acme", func(r *events.Receipt) { r.Seq = 7 })
	e.produce("acme", gap)
	e.produceChain("acme", 3) // seq 6.. built on the real chain: not applied after the break
	e.produceChain("globex", 5)
	p := e.projector(prometheus.NewRegistry())
	if err := e.runUntil(p, e.caughtUp); err != nil {
		t.Fatal(err)
	}
	h, _ := p.Ledger().Head(e.ctx, "acme")
	if h.Status != "broken" || h.Seq != 5 || !strings.Contains(h.BrokenReason, "gap") {
		t.Fatalf("acme head = %+v", h)
	}
	if n := e.count("SELECT count(*) FROM receipts WHERE tenant = 'acme'"); n != 5 {
		t.Fatalf("acme receipts = %d, want 5", n)
	}
	g, _ := p.Ledger().Head(e.ctx, "globex")
	if g.Status != "ok" || g.Seq != 10 {
		t.Fatalf("globex head = %+v", g)
	}
	if v := metricValue(p.broken); v != 1 {
		t.Fatalf("ledger_broken_tenants = %v", v)
	}
	// Still broken after a restart (state is in Postgres).
	p2 := e.projector(prometheus.NewRegistry())
	e.produceChain("globex", 1)
	if err := e.runUntil(p2, e.caughtUp); err != nil {
		t.Fatal(err)
	}
	if v := metricValue(p2.broken); v != 1 {
		t.Fatalf("after restart ledger_broken_tenants = %v", v)
	}
}

func TestForkBreaksTenant(t *testing.T) {
	e := newEnv(t)
	e.produceChain("acme", 2)
	prev := e.chains["acme"].chain.Head // what seq 3 links to
	e.produceChain("acme", 1)
	// A second, different receipt for seq 3 with the same prev_hash.
	fork := e.receipt("acme", func(r *events.Receipt) { r.Seq, r.PrevHash, r.Actor = 3, prev, "user:mallory" })
	e.produce("acme", fork)
	e.produceChain("acme", 2)
	p := e.projector(nil)
	if err := e.runUntil(p, e.caughtUp); err != nil {
		t.Fatal(err)
	}
	h, _ := p.Ledger().Head(e.ctx, "acme")
	if h.Status != "broken" || !strings.Contains(h.BrokenReason, "fork at seq 3") || h.Seq != 3 {
		t.Fatalf("head = %+v", h)
	}
	if n := e.count("SELECT count(*) FROM receipts WHERE tenant = 'acme'"); n != 3 {
		t.Fatalf("acme receipts = %d, want 3", n)
	}
}

func TestClusterMismatchRefuses(t *testing.T) {
	e := newEnv(t, kfake.ClusterID("cluster-a"))
	e.produceChain("acme", 3)
	if err := e.runUntil(e.projector(nil), e.caughtUp); err != nil {
		t.Fatal(err)
	}
	other, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, events.TopicEvents), kfake.ClusterID("cluster-b"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	p, err := NewProjector(Config{Brokers: other.ListenAddrs(), Pool: e.pool, Signer: CheckpointSigner{Name: "companyos-ledger", Key: e.cpKey}})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Run(e.ctx)
	if !errors.Is(err, ErrClusterMismatch) || !strings.Contains(err.Error(), `belong to Kafka cluster "cluster-a", connected to "cluster-b"`) {
		t.Fatalf("run = %v", err)
	}
}

func TestProofsVerify(t *testing.T) {
	e := newEnv(t)
	e.produceChain("acme", 13)
	p := e.projector(nil)
	if err := e.runUntil(p, e.caughtUp); err != nil {
		t.Fatal(err)
	}
	l := p.Ledger()
	ctx := context.Background()
	old, err := l.TreeHash(ctx, "acme", 13)
	if err != nil {
		t.Fatal(err)
	}
	cp13, err := l.Checkpoint(ctx, "acme")
	if err != nil || cp13.TreeSize != 13 || cp13.RootHash != old {
		t.Fatalf("checkpoint = %+v, %v", cp13, err)
	}
	e.produceChain("acme", 20)
	if err := e.runUntil(e.projector(nil), e.caughtUp); err != nil {
		t.Fatal(err)
	}
	cp, err := l.Checkpoint(ctx, "acme")
	if err != nil || cp.TreeSize != 33 {
		t.Fatalf("checkpoint = %+v, %v", cp, err)
	}
	// The note verifies offline with the published verifier key.
	v, err := note.NewVerifier(l.VerifierKey())
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open([]byte(cp.Note), note.VerifierList(v))
	if err != nil {
		t.Fatal(err)
	}
	tenant, size, root, err := ParseCheckpointText(n.Text)
	if err != nil || tenant != "acme" || size != 33 || root != cp.RootHash {
		t.Fatalf("note text %q: %v", n.Text, err)
	}
	tampered := strings.Replace(cp.Note, "\n33\n", "\n34\n", 1)
	if _, err := note.Open([]byte(tampered), note.VerifierList(v)); err == nil {
		t.Fatal("tampered note verified")
	}
	// Inclusion of every receipt against the checkpoint.
	for seq := int64(1); seq <= 33; seq++ {
		var envb []byte
		if err := e.pool.QueryRow(ctx, "SELECT envelope FROM receipts WHERE tenant = 'acme' AND seq = $1", seq).Scan(&envb); err != nil {
			t.Fatal(err)
		}
		env, _ := events.ParseEnvelope(envb)
		proof, err := l.InclusionProof(ctx, "acme", seq, 33)
		if err != nil {
			t.Fatal(err)
		}
		if err := tlog.CheckRecord(proof, 33, root, seq-1, tlog.RecordHash(env.Payload)); err != nil {
			t.Fatalf("seq %d: %v", seq, err)
		}
		if seq == 5 {
			if err := tlog.CheckRecord(proof, 33, root, seq-1, tlog.RecordHash(append(env.Payload, ' '))); err == nil {
				t.Fatal("proof verified a different payload")
			}
			if len(proof) > 0 {
				bad := append(tlog.RecordProof(nil), proof...)
				bad[0][0] ^= 1
				if err := tlog.CheckRecord(bad, 33, root, seq-1, tlog.RecordHash(env.Payload)); err == nil {
					t.Fatal("tampered inclusion proof verified")
				}
			}
		}
	}
	// Consistency 13 → 33.
	tp, err := l.ConsistencyProof(ctx, "acme", 13, 33)
	if err != nil {
		t.Fatal(err)
	}
	if err := tlog.CheckTree(tp, 33, root, 13, old); err != nil {
		t.Fatal(err)
	}
	bad := append(tlog.TreeProof(nil), tp...)
	bad[len(bad)-1][3] ^= 1
	if err := tlog.CheckTree(bad, 33, root, 13, old); err == nil {
		t.Fatal("tampered consistency proof verified")
	}
	if _, err := l.ConsistencyProof(ctx, "acme", 13, 34); !errors.Is(err, ErrInvalidRange) {
		t.Fatalf("proof beyond the tree: %v", err)
	}
}

func TestBadSignatureBreaksTenantWhenKeysSet(t *testing.T) {
	e := newEnv(t)
	e.produceChain("acme", 2)
	e.produceChain("globex", 2)
	good := e.signer
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	e.signer = events.NewSigner(other) // an unknown key signs acme's seq 3
	e.produceChain("acme", 1)
	e.signer = good
	e.produceChain("acme", 1)
	e.produceChain("globex", 1)
	ks := keySetOf(e)
	p, err := NewProjector(Config{Brokers: e.brokers, Pool: e.pool, Signer: CheckpointSigner{Name: "companyos-ledger", Key: e.cpKey}, Keys: &ks,
		MaxWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.runUntil(p, e.caughtUp); err != nil {
		t.Fatal(err)
	}
	h, _ := p.Ledger().Head(e.ctx, "acme")
	if h.Status != "broken" || h.Seq != 2 || !strings.Contains(h.BrokenReason, "unknown signing key") {
		t.Fatalf("acme head = %+v", h)
	}
	if g, _ := p.Ledger().Head(e.ctx, "globex"); g.Status != "ok" || g.Seq != 3 {
		t.Fatalf("globex head = %+v", g)
	}
}
