package graph

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
)

var (
	benchOnce    sync.Once
	benchTenants *Tenants
)

// benchGraph is the 50k-node / 220k-edge graph with skewed degrees, built
// once per test binary.
func benchGraph(b *testing.B) *Graph {
	benchOnce.Do(func() {
		benchTenants = NewTenants()
		for i, c := range genChanges(benchSpec) {
			if err := benchTenants.Apply("acme", uint64(i+1), c); err != nil {
				b.Fatal(err)
			}
		}
		g := benchTenants.Graph("acme")
		s := g.Stats()
		hub := hubOut(g)
		g.mu.RLock()
		maxIn := 0
		for _, l := range g.in {
			maxIn = max(maxIn, len(l))
		}
		hubDeg := len(g.out[g.index[hub]])
		g.mu.RUnlock()
		b.Logf("bench graph: %d nodes, %d edges, max out-degree %d (%s), max in-degree %d", s.Nodes, s.Edges, hubDeg, hub, maxIn)
	})
	return benchTenants.Graph("acme")
}

func benchQuery(b *testing.B, g *Graph, queries []Query, opts Options) {
	ctx := context.Background()
	results := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		res, err := Execute(ctx, g, queries[i%len(queries)], opts)
		if err != nil {
			b.Fatal(err)
		}
		results += len(res.Nodes) + len(res.Principals)
	}
	b.ReportMetric(float64(results)/float64(b.N), "results/op")
}

func BenchmarkRel3HopRandomService(b *testing.B) {
	g := benchGraph(b)
	r := rand.New(rand.NewPCG(1, 2))
	var qs []Query
	for range 1000 {
		qs = append(qs, mustParse(b, fmt.Sprintf("rel(3hop, 'svc:%05d'→'db:*')", r.IntN(benchSpec.services))))
	}
	benchQuery(b, g, qs, Options{})
}

func BenchmarkRel3HopHub(b *testing.B) {
	g := benchGraph(b)
	q := mustParse(b, fmt.Sprintf("rel(3hop, '%s'→'db:*')", hubOut(g)))
	benchQuery(b, g, []Query{q}, Options{})
}

// BenchmarkRel3HopHubBoth is the worst case: from the hub, both directions,
// every node matches (most of the graph), first page of 100.
func BenchmarkRel3HopHubBoth(b *testing.B) {
	g := benchGraph(b)
	q := mustParse(b, fmt.Sprintf("rel(3hop, '%s'→'*', dir='both')", hubOut(g)))
	benchQuery(b, g, []Query{q}, Options{MaxResults: 1 << 20})
}

func BenchmarkPathRandom(b *testing.B) {
	g := benchGraph(b)
	r := rand.New(rand.NewPCG(3, 4))
	var qs []Query
	for range 1000 {
		qs = append(qs, mustParse(b, fmt.Sprintf("path('user:%05d', 'dataset:%05d', dir='both')", r.IntN(benchSpec.users), r.IntN(100))))
	}
	benchQuery(b, g, qs, Options{})
}

// who_can pages of 100 over 7000 users against the real starter policy:
// admins (2% by attribute, more through groups) and same-region editors.
func BenchmarkWhoCanPolicy(b *testing.B) {
	g := benchGraph(b)
	engine := starterEngine(b)
	r := rand.New(rand.NewPCG(5, 6))
	var qs []Query
	for range 100 {
		qs = append(qs, mustParse(b, fmt.Sprintf("who_can('entity.update', 'dataset:%05d')", r.IntN(benchSpec.datasets))))
	}
	benchQuery(b, g, qs, Options{Authorizer: engine})
}

// Same with a trivial authorizer: the graph side of who_can.
func BenchmarkWhoCanFake(b *testing.B) {
	g := benchGraph(b)
	r := rand.New(rand.NewPCG(5, 6))
	var qs []Query
	for range 100 {
		qs = append(qs, mustParse(b, fmt.Sprintf("who_can('export', 'dataset:%05d')", r.IntN(benchSpec.datasets))))
	}
	benchQuery(b, g, qs, Options{Authorizer: fakeAuthorizer{}})
}

func BenchmarkPrincipalRoles(b *testing.B) {
	g := benchGraph(b)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		PrincipalRoles(g, fmt.Sprintf("user:%05d", i%benchSpec.users))
	}
}

func BenchmarkSnapshotWrite(b *testing.B) {
	benchGraph(b)
	var buf bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		if err := WriteSnapshot(&buf, benchTenants, map[int32]int64{0: 1, 1: 2}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(buf.Len()), "bytes")
}

func BenchmarkSnapshotRead(b *testing.B) {
	benchGraph(b)
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, benchTenants, map[int32]int64{0: 1}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ReadSnapshot(bytes.NewReader(buf.Bytes())); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSnapshotWriteRead is the restart budget (target < 1s).
func BenchmarkSnapshotWriteRead(b *testing.B) {
	benchGraph(b)
	b.ReportAllocs()
	for b.Loop() {
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(WriteSnapshot(pw, benchTenants, map[int32]int64{0: 1})) }()
		if _, _, err := ReadSnapshot(pr); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuild applies the ~270k changes of the bench graph.
func BenchmarkBuild(b *testing.B) {
	cs := genChanges(benchSpec)
	b.ReportAllocs()
	for b.Loop() {
		g := NewGraph("acme")
		for _, c := range cs {
			if _, err := g.ApplyChange(c); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(len(cs)), "changes")
}

func BenchmarkParse(b *testing.B) {
	vars := map[string]any{"svc": "svc:A"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("rel(3hop, $svc→'db:*', rel=['depends_on','reads'], dir='both')", vars); err != nil {
			b.Fatal(err)
		}
	}
}
