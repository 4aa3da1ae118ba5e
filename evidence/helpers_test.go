package evidence_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/companyos/companyos/bench/fixture"
	"github.com/companyos/companyos/evidence"
	"github.com/companyos/companyos/internal/stores"
	"github.com/companyos/companyos/projections/ledger"
)

// env is one test's fresh database with the migrations applied (through the
// real runner, so 0002_evidence.up.sql is proven to be picked up).
type env struct {
	t    testing.TB
	ctx  context.Context
	pool *pgxpool.Pool
	reg  *prometheus.Registry
	s    *evidence.Store
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	pool, err := stores.EnsurePostgres(ctx, stores.TestPostgres(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := ledger.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, pool: pool, reg: prometheus.NewRegistry()}
	e.s = e.store(e.reg)
	return e
}

// store returns another Store on the same database, as a second process
// would have (its own pack cache).
func (e *env) store(reg prometheus.Registerer) *evidence.Store {
	e.t.Helper()
	s, err := evidence.New(evidence.Config{Pool: e.pool, Registerer: reg})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(s.Close)
	return s
}

// vacuumFull rewrites the evidence tables, so their size counts live rows only.
func (e *env) vacuumFull() {
	e.t.Helper()
	if _, err := e.pool.Exec(e.ctx, "VACUUM FULL evidence_loose, evidence_packed, evidence_packs"); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) count(sql string, args ...any) int64 {
	e.t.Helper()
	var n int64
	if err := e.pool.QueryRow(e.ctx, sql, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// metric sums every series of the named metric in e's registry.
func (e *env) metric(name string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func (e *env) stats() evidence.Stats {
	e.t.Helper()
	st, err := e.s.Stats(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// putAll stores blobs through PutTx in committed batches, as the ledger
// projector does.
func (e *env) putAll(blobs [][]byte, batch int) {
	e.t.Helper()
	for i := 0; i < len(blobs); i += batch {
		chunk := blobs[i:min(i+batch, len(blobs))]
		if err := pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error { return e.s.PutTx(e.ctx, tx, chunk) }); err != nil {
			e.t.Fatal(err)
		}
	}
}

// mustReadAll checks that every blob reads back byte-exact through s.
func (e *env) mustReadAll(s *evidence.Store, blobs [][]byte) {
	e.t.Helper()
	for _, b := range blobs {
		got, err := s.Get(e.ctx, evidence.Hash(b))
		if err != nil {
			e.t.Fatalf("get %s: %v", evidence.Hash(b), err)
		}
		if !bytes.Equal(got, b) {
			e.t.Fatalf("get %s: got %q, want %q", evidence.Hash(b), got, b)
		}
	}
}

func digest(t testing.TB, hash string) []byte {
	t.Helper()
	d, err := evidence.ParseHash(hash)
	if err != nil {
		t.Fatal(err)
	}
	return d[:]
}

func zstdFrame(t testing.TB, b []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

func unzstd(t testing.TB, frame []byte) []byte {
	t.Helper()
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	b, err := dec.DecodeAll(frame, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fixtureBodies returns the command JSON bodies bench/fixture would send for a
// generated graph: its entity.create commands, then its relation.link
// commands. They are built exactly as fixture.Load builds them (json.Marshal
// of a map, so keys are sorted), and are what receipts carry as evidence.
func fixtureBodies(t testing.TB, seed uint64, nodes, edges int) [][]byte {
	t.Helper()
	g, err := fixture.Generate(seed, nodes, edges)
	if err != nil {
		t.Fatal(err)
	}
	const tenant = "pilot-1"
	out := make([][]byte, 0, len(g.Entities)+len(g.Relations))
	for _, en := range g.Entities {
		b, err := json.Marshal(map[string]any{"tenant": tenant, "type": "entity.create",
			"payload": map[string]any{"id": en.ID, "kind": en.Kind, "attrs": en.Attrs}})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	for _, r := range g.Relations {
		b, err := json.Marshal(map[string]any{"tenant": tenant, "type": "relation.link",
			"payload": map[string]any{"from": r.From, "rel": r.Rel, "to": r.To}})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// uniqueBodies returns n distinct fixture-like command bodies tagged with
// run, for benchmarks that must never hit the dedupe path.
func uniqueBodies(run string, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		if i%5 == 0 {
			out[i] = fmt.Appendf(nil, `{"payload":{"attrs":{"employment_status":"active","region":"eu","risk_score":%d},"id":"user:%s-%d","kind":"user"},"tenant":"bench-%d","type":"entity.create"}`, i%100, run, i, i%8)
		} else {
			out[i] = fmt.Appendf(nil, `{"payload":{"from":"user:%s-%d","rel":"member_of","to":"group:group-%d"},"tenant":"bench-%d","type":"relation.link"}`, run, i, i%977, i%8)
		}
	}
	return out
}
