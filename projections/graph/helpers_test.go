package graph

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/policy"
)

func put(id, kind string, version uint64, attrs map[string]any) *events.Change {
	return &events.Change{Op: events.OpEntityPut, Entity: &events.Entity{ID: id, Kind: kind, Attrs: attrs, Version: version}}
}

func link(from, rel, to string) *events.Change {
	return &events.Change{Op: events.OpRelationLink, Relation: &events.Relation{From: from, Rel: rel, To: to}}
}

func unlink(from, rel, to string) *events.Change {
	return &events.Change{Op: events.OpRelationUnlink, Relation: &events.Relation{From: from, Rel: rel, To: to}}
}

func del(id, kind string, version uint64, unlinked ...events.Relation) *events.Change {
	return &events.Change{Op: events.OpEntityDelete, Entity: &events.Entity{ID: id, Kind: kind, Version: version, Deleted: true}, Unlinked: unlinked}
}

// smallChanges builds the hand-made test graph:
//
//	user:alice -owns-> svc:A -depends_on-> svc:B -depends_on-> db:x
//	                   svc:A -reads-> db:eu/orders   svc:B -depends_on-> svc:C
//	                   svc:C -reads-> db:y           svc:C -depends_on-> db:x
//	user:alice -member_of-> group:eng -member_of-> group:platform -has_role-> role:editor
//	user:carol -has_role-> role:admin       service:ci -member_of-> group:eng
//	user:erin -member_of-> group:exporters -can_export-> dataset:prod
//	user:frank -can_export-> dataset:prod
func smallChanges() []*events.Change {
	return []*events.Change{
		put("svc:A", "service_component", 1, map[string]any{"tier": "gold"}),
		put("svc:B", "service_component", 1, nil),
		put("svc:C", "service_component", 1, nil),
		put("db:x", "database", 1, nil),
		put("db:y", "database", 1, nil),
		put("db:eu/orders", "database", 1, map[string]any{"region": "eu"}),
		put("user:alice", "user", 1, map[string]any{"roles": "viewer", "region": "eu"}),
		put("user:bob", "user", 1, map[string]any{"roles": []any{"admin"}, "region": "us"}),
		put("user:carol", "user", 1, map[string]any{"region": "us"}),
		put("user:dave", "user", 1, map[string]any{"region": "eu"}),
		put("user:erin", "user", 1, nil),
		put("user:frank", "user", 1, nil),
		put("service:ci", "service", 1, nil),
		put("group:eng", "group", 1, nil),
		put("group:platform", "group", 1, nil),
		put("group:exporters", "group", 1, nil),
		put("role:editor", "role", 1, nil),
		put("role:admin", "role", 1, nil),
		put("dataset:prod", "dataset", 1, map[string]any{"region": "eu"}),
		link("svc:A", "depends_on", "svc:B"),
		link("svc:B", "depends_on", "db:x"),
		link("svc:B", "depends_on", "svc:C"),
		link("svc:C", "reads", "db:y"),
		link("svc:C", "depends_on", "db:x"),
		link("svc:A", "reads", "db:eu/orders"),
		link("user:alice", "owns", "svc:A"),
		link("user:alice", "member_of", "group:eng"),
		link("group:eng", "member_of", "group:platform"),
		link("group:platform", "has_role", "role:editor"),
		link("user:carol", "has_role", "role:admin"),
		link("service:ci", "member_of", "group:eng"),
		link("user:erin", "member_of", "group:exporters"),
		link("group:exporters", "can_export", "dataset:prod"),
		link("user:frank", "can_export", "dataset:prod"),
	}
}

func smallGraph(t testing.TB) *Graph {
	t.Helper()
	g := NewGraph("acme")
	for _, c := range smallChanges() {
		if _, err := g.ApplyChange(c); err != nil {
			t.Fatalf("apply %+v: %v", c, err)
		}
	}
	return g
}

// genSpec describes a generated graph with skewed degrees: popular edge
// targets are drawn as int(N * u^3), so low indexes are in-hubs, and a few
// services are out-hubs.
type genSpec struct {
	services, dbs, datasets, users, groups, roles int
	edges                                         int
	seed                                          uint64
}

var benchSpec = genSpec{services: 12000, dbs: 6000, datasets: 24000, users: 7000, groups: 990, roles: 10, edges: 220000, seed: 42}

func genChanges(s genSpec) []*events.Change {
	r := rand.New(rand.NewPCG(s.seed, s.seed^0x9e3779b97f4a7c15))
	skew := func(n int, p float64) int {
		return min(int(float64(n)*math.Pow(r.Float64(), p)), n-1)
	}
	var cs []*events.Change
	regions := []string{"eu", "us", "apac"}
	for i := range s.services {
		cs = append(cs, put(fmt.Sprintf("svc:%05d", i), "service_component", 1, map[string]any{"tier": []string{"gold", "silver", "bronze"}[i%3], "owner": fmt.Sprintf("team-%d", i%97)}))
	}
	for i := range s.dbs {
		cs = append(cs, put(fmt.Sprintf("db:%05d", i), "database", 1, map[string]any{"region": regions[i%3]}))
	}
	for i := range s.datasets {
		cs = append(cs, put(fmt.Sprintf("dataset:%05d", i), "dataset", 1, map[string]any{"region": regions[i%3], "pii": i%5 == 0}))
	}
	for i := range s.users {
		attrs := map[string]any{"region": regions[i%3]}
		if i%50 == 0 {
			attrs["roles"] = []any{"admin"}
		}
		cs = append(cs, put(fmt.Sprintf("user:%05d", i), "user", 1, attrs))
	}
	for i := range s.groups {
		cs = append(cs, put(fmt.Sprintf("group:%04d", i), "group", 1, nil))
	}
	roleNames := []string{"admin", "editor", "viewer", "auditor", "owner", "oncall", "billing", "support", "security", "intern"}
	for i := range s.roles {
		cs = append(cs, put("role:"+roleNames[i%len(roleNames)], "role", 1, nil))
	}
	seen := map[[3]string]bool{}
	add := func(from, rel, to string) {
		k := [3]string{from, rel, to}
		if seen[k] || from == to {
			return
		}
		seen[k] = true
		cs = append(cs, link(from, rel, to))
	}
	svc := func(i int) string { return fmt.Sprintf("svc:%05d", i) }
	// A few services are out-hubs (gateways, aggregators that depend on
	// hundreds of services), taken from the middle of the id range so they
	// are not also the in-hubs; popular targets (auth, shared databases,
	// low indexes) are in-hubs. Everything else is drawn uniformly.
	const outHubs = 5
	depSource := func() string {
		if r.IntN(100) < 3 {
			return svc(s.services/2 + r.IntN(outHubs))
		}
		return svc(r.IntN(s.services))
	}
	for len(seen) < s.edges {
		switch x := r.IntN(100); {
		case x < 45:
			add(depSource(), "depends_on", svc(skew(s.services, 3)))
		case x < 60:
			add(depSource(), "depends_on", fmt.Sprintf("db:%05d", skew(s.dbs, 3)))
		case x < 75:
			add(svc(r.IntN(s.services)), "reads", fmt.Sprintf("dataset:%05d", skew(s.datasets, 3)))
		case x < 80:
			add(fmt.Sprintf("db:%05d", r.IntN(s.dbs)), "stores", fmt.Sprintf("dataset:%05d", r.IntN(s.datasets)))
		case x < 88:
			add(fmt.Sprintf("user:%05d", r.IntN(s.users)), "member_of", fmt.Sprintf("group:%04d", skew(s.groups, 3)))
		case x < 89:
			g1, g2 := r.IntN(s.groups), r.IntN(s.groups)
			if g1 > g2 { // nesting without cycles
				add(fmt.Sprintf("group:%04d", g1), "member_of", fmt.Sprintf("group:%04d", g2))
			}
		case x < 90:
			add(fmt.Sprintf("group:%04d", r.IntN(s.groups)), "has_role", "role:"+roleNames[1+r.IntN(len(roleNames)-1)])
		case x < 95:
			add(fmt.Sprintf("user:%05d", r.IntN(s.users)), "owns", svc(r.IntN(s.services)))
		default:
			add(fmt.Sprintf("user:%05d", r.IntN(s.users)), "can_export", fmt.Sprintf("dataset:%05d", skew(s.datasets, 3)))
		}
	}
	return cs
}

func genGraph(t testing.TB, s genSpec) *Graph {
	t.Helper()
	g := NewGraph("acme")
	for _, c := range genChanges(s) {
		if _, err := g.ApplyChange(c); err != nil {
			t.Fatal(err)
		}
	}
	return g
}

// hubOut returns the node with the largest out-degree among ids with prefix.
func hubOut(g *Graph) string {
	g.mu.RLock()
	defer g.mu.RUnlock()
	best := 0
	for i := range g.out {
		if len(g.out[i]) > len(g.out[best]) {
			best = i
		}
	}
	return g.nodes[best].id
}

// fakeAuthorizer allows principals holding role "admin", or holding a
// can_<action> grant on the resource in the graph facts.
type fakeAuthorizer struct{}

func (fakeAuthorizer) Decide(_ context.Context, in policy.Input) policy.Decision {
	if slices.Contains(in.Principal.Roles, "admin") {
		return policy.Decision{Allow: true, Rationale: []policy.Reason{{Rule: "fake_admin", Result: true}}, Obligations: []policy.Obligation{}, PolicyVersion: "fake"}
	}
	if facts, ok := in.Principal.Attrs[GraphFactsAttr].(map[string]any); ok {
		if slices.Contains(facts["grants"].([]string), "can_"+in.Action) {
			return policy.Decision{Allow: true, Rationale: []policy.Reason{{Rule: "fake_grant", Result: true}}, Obligations: []policy.Obligation{}, PolicyVersion: "fake"}
		}
	}
	return policy.Decision{Rationale: []policy.Reason{{Rule: "fake_deny"}}, Obligations: []policy.Obligation{}, PolicyVersion: "fake"}
}

func ids(nodes []NodeView) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.ID
	}
	return out
}

func principalIDs(ps []PrincipalAccess) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.ID
	}
	return out
}

// edgeSet lists every edge of g, sorted, from both adjacency directions
// (and checks they agree).
func edgeSet(t testing.TB, g *Graph) []Edge {
	t.Helper()
	g.mu.RLock()
	defer g.mu.RUnlock()
	var out, in []Edge
	for i := range g.nodes {
		for _, e := range g.out[i] {
			out = append(out, Edge{g.nodes[i].id, g.rels[e.rel], g.nodes[e.peer].id})
		}
		for _, e := range g.in[i] {
			in = append(in, Edge{g.nodes[e.peer].id, g.rels[e.rel], g.nodes[i].id})
		}
	}
	slices.SortFunc(out, compareEdges)
	slices.SortFunc(in, compareEdges)
	if !slices.Equal(out, in) {
		t.Fatalf("out- and in-adjacency disagree:\nout %v\nin  %v", out, in)
	}
	if len(out) != g.edges {
		t.Fatalf("edge count %d, adjacency has %d", g.edges, len(out))
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
