package graph

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"

	"github.com/companyos/companyos/events"
)

func TestApplyChangeIdempotent(t *testing.T) {
	g := smallGraph(t)
	stats := g.Stats()
	edges := edgeSet(t, g)
	for _, c := range smallChanges() {
		changed, err := g.ApplyChange(c)
		if err != nil {
			t.Fatal(err)
		}
		if changed {
			t.Errorf("re-applying %s %+v %+v changed the graph", c.Op, c.Entity, c.Relation)
		}
	}
	if got := g.Stats(); !reflect.DeepEqual(got, stats) {
		t.Errorf("stats after re-apply = %+v, want %+v", got, stats)
	}
	if got := edgeSet(t, g); !reflect.DeepEqual(got, edges) {
		t.Errorf("edges changed on re-apply")
	}
	want := Stats{Nodes: 19, Edges: 15,
		ByKind: map[string]int{"service_component": 3, "database": 3, "user": 6, "service": 1, "group": 3, "role": 2, "dataset": 1},
		ByRel:  map[string]int{"depends_on": 4, "reads": 2, "owns": 1, "member_of": 4, "has_role": 2, "can_export": 2}}
	if !reflect.DeepEqual(stats, want) {
		t.Errorf("stats = %+v, want %+v", stats, want)
	}
}

func TestApplyChangeVersions(t *testing.T) {
	g := NewGraph("acme")
	mustApply := func(c *events.Change, wantChanged bool) {
		t.Helper()
		changed, err := g.ApplyChange(c)
		if err != nil {
			t.Fatal(err)
		}
		if changed != wantChanged {
			t.Fatalf("changed = %v, want %v", changed, wantChanged)
		}
	}
	mustApply(put("svc:A", "svc", 2, map[string]any{"v": "two"}), true)
	mustApply(put("svc:A", "svc", 1, map[string]any{"v": "one"}), false) // stale
	mustApply(put("svc:A", "svc", 2, map[string]any{"v": "other"}), false)
	if n, _ := g.Node("svc:A"); n.Attrs["v"] != "two" || n.Version != 2 {
		t.Fatalf("node = %+v", n)
	}
	mustApply(put("svc:A", "component", 3, nil), true)
	if s := g.Stats(); s.ByKind["component"] != 1 || s.ByKind["svc"] != 0 || s.Nodes != 1 {
		t.Fatalf("kind change: stats %+v", s)
	}
	if n, _ := g.Node("svc:A"); n.Attrs == nil {
		t.Fatal("nil attrs in a view")
	}
	if _, ok := g.Node("svc:nope"); ok {
		t.Fatal("unknown node found")
	}
	// A link to an unknown id makes a stub that queries can walk but Node
	// does not report; a later put fills it in.
	mustApply(link("svc:A", "uses", "svc:stub"), true)
	if _, ok := g.Node("svc:stub"); ok {
		t.Fatal("stub reported by Node")
	}
	if s := g.Stats(); s.Nodes != 1 || s.Edges != 1 {
		t.Fatalf("stats with stub %+v", s)
	}
	mustApply(put("svc:stub", "svc", 1, nil), true)
	if n, ok := g.Node("svc:stub"); !ok || n.Kind != "svc" {
		t.Fatalf("filled stub: %+v %v", n, ok)
	}
	mustApply(unlink("svc:A", "uses", "svc:stub"), true)
	mustApply(unlink("svc:A", "uses", "svc:stub"), false)
	mustApply(unlink("svc:A", "never", "svc:stub"), false)
	mustApply(unlink("svc:none", "uses", "svc:stub"), false)
	if s := g.Stats(); s.Edges != 0 || len(s.ByRel) != 0 {
		t.Fatalf("stats after unlink %+v", s)
	}
	mustApply(nil, false)
}

func TestDeleteRemovesEdgesBothDirections(t *testing.T) {
	g := smallGraph(t)
	before := g.Stats()
	// svc:B has A -> B (in), B -> x and B -> C (out). Unlinked lists only
	// one of them: the others must go too.
	c := del("svc:B", "service_component", 2, events.Relation{From: "svc:A", Rel: "depends_on", To: "svc:B"})
	if changed, err := g.ApplyChange(c); err != nil || !changed {
		t.Fatalf("delete: %v %v", changed, err)
	}
	for _, e := range [][3]string{{"svc:A", "depends_on", "svc:B"}, {"svc:B", "depends_on", "db:x"}, {"svc:B", "depends_on", "svc:C"}} {
		if g.HasEdge(e[0], e[1], e[2]) {
			t.Errorf("edge %v survived the delete", e)
		}
	}
	edges := edgeSet(t, g) // also checks in/out agree
	for _, e := range edges {
		if e.From == "svc:B" || e.To == "svc:B" {
			t.Errorf("edge %v touches the deleted node", e)
		}
	}
	s := g.Stats()
	if s.Nodes != before.Nodes-1 || s.Deleted != 1 || s.Edges != before.Edges-3 || s.ByRel["depends_on"] != 1 {
		t.Errorf("stats after delete %+v (before %+v)", s, before)
	}
	n, ok := g.Node("svc:B")
	if !ok || !n.Deleted || n.Version != 2 {
		t.Errorf("tombstone %+v %v", n, ok)
	}
	// Re-applying the delete, a stale put or a link to the tombstone: no-ops.
	for _, c := range []*events.Change{c, put("svc:B", "service_component", 1, nil), put("svc:B", "service_component", 2, nil), link("svc:A", "depends_on", "svc:B")} {
		if changed, err := g.ApplyChange(c); err != nil || changed {
			t.Errorf("%s after delete: changed=%v err=%v", c.Op, changed, err)
		}
	}
	if got := g.Stats(); !reflect.DeepEqual(got, s) {
		t.Errorf("stats changed: %+v", got)
	}
	// Queries do not start from or reach a deleted node.
	res, err := Execute(context.Background(), g, mustParse(t, "neighbors('svc:B', dir='both')"), Options{})
	if err != nil || len(res.Nodes) != 0 {
		t.Errorf("neighbors of a deleted node: %v %v", res.Nodes, err)
	}
	// Re-created with a newer version: live again, without the old edges.
	if changed, _ := g.ApplyChange(put("svc:B", "service_component", 3, nil)); !changed {
		t.Fatal("re-create ignored")
	}
	if n, _ := g.Node("svc:B"); n.Deleted || g.Stats().Nodes != before.Nodes || g.Stats().Deleted != 0 {
		t.Errorf("re-created %+v, stats %+v", n, g.Stats())
	}
}

func TestDeleteSelfLoopAndHub(t *testing.T) {
	g := NewGraph("acme")
	apply := func(c *events.Change) {
		if _, err := g.ApplyChange(c); err != nil {
			t.Fatal(err)
		}
	}
	apply(put("n:hub", "n", 1, nil))
	apply(link("n:hub", "self", "n:hub"))
	for _, id := range []string{"n:1", "n:2", "n:3"} {
		apply(put(id, "n", 1, nil))
		apply(link("n:hub", "to", id))
		apply(link(id, "to", "n:hub"))
		apply(link(id, "to", "n:1"))
	}
	apply(del("n:hub", "n", 2))
	edges := edgeSet(t, g)
	want := []Edge{{"n:1", "to", "n:1"}, {"n:2", "to", "n:1"}, {"n:3", "to", "n:1"}}
	if !reflect.DeepEqual(edges, want) {
		t.Errorf("edges after hub delete = %v, want %v", edges, want)
	}
}

func TestApplyChangeErrors(t *testing.T) {
	g := NewGraph("acme")
	for _, c := range []*events.Change{
		{Op: "entity.frobnicate"},
		{Op: events.OpEntityPut},
		{Op: events.OpEntityPut, Entity: &events.Entity{Kind: "x"}},
		{Op: events.OpRelationLink},
		{Op: events.OpRelationLink, Relation: &events.Relation{From: "a", To: "b"}},
		{Op: events.OpEntityDelete, Entity: &events.Entity{ID: "a"}, Unlinked: []events.Relation{{From: "a"}}},
	} {
		if _, err := g.ApplyChange(c); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	if s := g.Stats(); s.Nodes != 0 || s.Edges != 0 || len(g.nodes) != 0 {
		t.Errorf("a rejected change left traces: %+v", s)
	}
}

func TestTenantsApply(t *testing.T) {
	ts := NewTenants()
	cs := smallChanges()
	for i, c := range cs {
		if err := ts.Apply("acme", uint64(i+1), c); err != nil {
			t.Fatal(err)
		}
	}
	n := uint64(len(cs))
	if got := ts.AppliedSeq("acme"); got != n {
		t.Fatalf("applied = %d, want %d", got, n)
	}
	stats := ts.Graph("acme").Stats()
	// Replaying the whole log is a no-op, even for changes that would not be
	// idempotent on their own (the unlink of seq n+1 must not be undone).
	if err := ts.Apply("acme", n+1, unlink("svc:A", "depends_on", "svc:B")); err != nil {
		t.Fatal(err)
	}
	for i, c := range cs {
		if err := ts.Apply("acme", uint64(i+1), c); err != nil {
			t.Fatal(err)
		}
	}
	if ts.Graph("acme").HasEdge("svc:A", "depends_on", "svc:B") {
		t.Error("replay re-created an unlinked edge")
	}
	if got := ts.Graph("acme").Stats(); got.Edges != stats.Edges-1 {
		t.Errorf("edges after replay %d, want %d", got.Edges, stats.Edges-1)
	}
	// A gap is a typed error and applies nothing.
	err := ts.Apply("acme", n+3, put("svc:Z", "svc", 1, nil))
	var gap *GapError
	if !errors.Is(err, ErrGap) || !errors.As(err, &gap) || gap.Applied != n+1 || gap.Seq != n+3 || gap.Tenant != "acme" {
		t.Fatalf("gap: %v", err)
	}
	if _, ok := ts.Graph("acme").Node("svc:Z"); ok {
		t.Error("gap applied its change")
	}
	// The first record of a new tenant must be seq 1.
	if err := ts.Apply("globex", 2, nil); !errors.Is(err, ErrGap) {
		t.Errorf("new tenant at seq 2: %v", err)
	}
	if ts.Graph("globex") != nil {
		t.Error("gap created a tenant")
	}
	// A deny receipt (nil change) advances the seq.
	if err := ts.Apply("acme", n+2, nil); err != nil || ts.AppliedSeq("acme") != n+2 {
		t.Fatalf("nil change: %v, applied %d", err, ts.AppliedSeq("acme"))
	}
	// A malformed change does not advance it.
	poison := &events.Change{Op: "bogus"}
	if err := ts.Apply("acme", n+3, poison); err == nil || ts.AppliedSeq("acme") != n+2 {
		t.Fatalf("malformed: %v, applied %d", err, ts.AppliedSeq("acme"))
	}
	// Skipping it deliberately; a later replay of the poison is a no-op.
	if err := ts.Apply("acme", n+3, nil); err != nil {
		t.Fatal(err)
	}
	if err := ts.Apply("acme", n+3, poison); err != nil {
		t.Errorf("replay of a skipped poison record: %v", err)
	}
	if err := ts.Apply("initech", 1, poison); err == nil || ts.Graph("initech") != nil {
		t.Errorf("bad first change: %v, graph %v", err, ts.Graph("initech"))
	}
	if err := ts.Apply("globex", 1, put("svc:G", "svc", 1, nil)); err != nil {
		t.Fatal(err)
	}
	if got := ts.Names(); !reflect.DeepEqual(got, []string{"acme", "globex"}) {
		t.Errorf("names = %v", got)
	}
	if ts.AppliedSeq("nobody") != 0 || ts.Graph("nobody") != nil {
		t.Error("unknown tenant")
	}
}

// TestConcurrentApplyAndQuery is meant for -race: one writer, many readers.
func TestConcurrentApplyAndQuery(t *testing.T) {
	cs := genChanges(genSpec{services: 300, dbs: 100, datasets: 300, users: 200, groups: 20, roles: 10, edges: 3000, seed: 7})
	ts := NewTenants()
	if err := ts.Apply("acme", 1, cs[0]); err != nil {
		t.Fatal(err)
	}
	g := ts.Graph("acme")
	queries := []Query{
		mustParse(t, "rel(3hop, 'svc:00000'->'db:*')"),
		mustParse(t, "neighbors('svc:00001', depth=2, dir='both')"),
		mustParse(t, "path('user:00001', 'dataset:00000', dir='both')"),
		mustParse(t, "who_can('export', 'dataset:00000')"),
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	for r := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				q := queries[(r+i)%len(queries)]
				if _, err := Execute(t.Context(), g, q, Options{Authorizer: fakeAuthorizer{}, Limit: 20}); err != nil {
					var le *LimitError
					if !errors.As(err, &le) {
						t.Error(err)
						return
					}
				}
				_ = g.Stats()
				_, _ = PrincipalRoles(g, "user:00001")
			}
		})
	}
	for i, c := range cs[1:] {
		if err := ts.Apply("acme", uint64(i+2), c); err != nil {
			t.Fatal(err)
		}
		if i%500 == 0 {
			_ = ts.Apply("acme", uint64(i+2), nil) // replay, no-op
		}
	}
	close(done)
	wg.Wait()
	edgeSet(t, g)
}
