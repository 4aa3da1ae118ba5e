package graph

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/companyos/companyos/policy"
)

func run(t testing.TB, g *Graph, src string, opts Options) Result {
	t.Helper()
	res, err := Execute(context.Background(), g, mustParse(t, src), opts)
	if err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	return res
}

func pathStrings(ps []Path) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = strings.Join(p.Nodes, " ")
	}
	return out
}

func TestExecuteReach(t *testing.T) {
	g := smallGraph(t)
	cases := []struct {
		src   string
		nodes []string
		paths []string
	}{
		{"rel(1hop, 'svc:A'->'*')", []string{"db:eu/orders", "svc:B"}, []string{"svc:A db:eu/orders", "svc:A svc:B"}},
		{"rel(2hop, 'svc:A'→'db:*')", []string{"db:eu/orders", "db:x"}, []string{"svc:A db:eu/orders", "svc:A svc:B db:x"}},
		{"rel(3hop, 'svc:A'→'db:*')", []string{"db:eu/orders", "db:x", "db:y"}, []string{"svc:A db:eu/orders", "svc:A svc:B db:x", "svc:A svc:B svc:C db:y"}},
		{"rel(3hop, 'svc:A'→'db:?')", []string{"db:x", "db:y"}, []string{"svc:A svc:B db:x", "svc:A svc:B svc:C db:y"}},
		{"rel(3hop, 'svc:A'→'*/orders')", []string{"db:eu/orders"}, []string{"svc:A db:eu/orders"}},
		{"rel(6hop, 'svc:A'→'db:*', rel='depends_on')", []string{"db:x"}, []string{"svc:A svc:B db:x"}},
		{"rel(6hop, 'svc:A'→'db:*', rel=['reads'])", []string{"db:eu/orders"}, []string{"svc:A db:eu/orders"}},
		{"rel(6hop, 'svc:A'→'db:*', rel='no_such_rel')", []string{}, []string{}},
		{"rel(2hop, 'db:x'→'*', dir='in')", []string{"svc:A", "svc:B", "svc:C"}, []string{"db:x svc:B svc:A", "db:x svc:B", "db:x svc:C"}},
		{"rel(1hop, 'svc:C'→'*', dir='both')", []string{"db:x", "db:y", "svc:B"}, []string{"svc:C db:x", "svc:C db:y", "svc:C svc:B"}},
		{"rel(3hop, 'svc:nope'→'*')", []string{}, []string{}},
		{"rel(3hop, 'svc:A'→'svc:A')", []string{}, []string{}}, // the start is not its own result
		{"neighbors('svc:A')", []string{"db:eu/orders", "svc:B"}, []string{"svc:A db:eu/orders", "svc:A svc:B"}},
		{"neighbors('svc:A', dir='both')", []string{"db:eu/orders", "svc:B", "user:alice"}, []string{"svc:A db:eu/orders", "svc:A svc:B", "svc:A user:alice"}},
		{"neighbors('svc:A', depth=2, rel='depends_on', dir='both')", []string{"db:x", "svc:B", "svc:C"}, []string{"svc:A svc:B db:x", "svc:A svc:B", "svc:A svc:B svc:C"}},
	}
	for _, c := range cases {
		res := run(t, g, c.src, Options{})
		if got := ids(res.Nodes); !slices.Equal(got, c.nodes) {
			t.Errorf("%s: nodes %v, want %v", c.src, got, c.nodes)
		}
		if got := pathStrings(res.Paths); !slices.Equal(got, c.paths) {
			t.Errorf("%s: paths %v, want %v", c.src, got, c.paths)
		}
		if res.NextCursor != "" {
			t.Errorf("%s: unexpected cursor", c.src)
		}
	}
	// Edges keep their real direction; the result's edges are those of its paths.
	res := run(t, g, "rel(2hop, 'db:x'→'svc:A', dir='in')", Options{})
	want := []Edge{{"svc:A", "depends_on", "svc:B"}, {"svc:B", "depends_on", "db:x"}}
	if !reflect.DeepEqual(res.Edges, want) || !reflect.DeepEqual(res.Paths[0].Edges, []Edge{want[1], want[0]}) {
		t.Errorf("edges %v, path edges %v", res.Edges, res.Paths[0].Edges)
	}
	if n := res.Nodes[0]; n.Kind != "service_component" || n.Attrs["tier"] != "gold" || n.Version != 1 {
		t.Errorf("node view %+v", n)
	}
	// JSON shape.
	b, _ := json.Marshal(run(t, g, "rel(3hop, 'svc:nope'→'*')", Options{}))
	if string(b) != `{"nodes":[],"edges":[],"paths":[],"principals":[]}` {
		t.Errorf("empty result JSON %s", b)
	}
	b, _ = json.Marshal(res)
	if !strings.Contains(string(b), `"nodes":[{"id":"svc:A","kind":"service_component","attrs":{"tier":"gold"},"version":1}]`) ||
		!strings.Contains(string(b), `"edges":[{"from":"svc:A","rel":"depends_on","to":"svc:B"}`) {
		t.Errorf("result JSON %s", b)
	}
}

func TestExecutePath(t *testing.T) {
	g := smallGraph(t)
	cases := []struct {
		src  string
		path string
	}{
		{"path('user:alice', 'db:y')", "user:alice svc:A svc:B svc:C db:y"},
		{"path('user:alice', 'db:x')", "user:alice svc:A svc:B db:x"},
		{"path('user:alice', 'db:y', depth=3)", ""},
		{"path('user:alice', 'db:y', depth=4)", "user:alice svc:A svc:B svc:C db:y"},
		{"path('db:y', 'user:alice')", ""},
		{"path('db:y', 'user:alice', dir='in')", "db:y svc:C svc:B svc:A user:alice"},
		{"path('db:y', 'db:x', dir='both')", "db:y svc:C db:x"},
		{"path('user:alice', 'db:x', rel='depends_on')", ""},
		{"path('user:alice', 'db:x', rel=['depends_on', 'owns'])", "user:alice svc:A svc:B db:x"},
		{"path('svc:A', 'svc:A')", "svc:A"},
		{"path('svc:A', 'svc:nope')", ""},
		{"path('svc:nope', 'svc:A')", ""},
	}
	for _, c := range cases {
		res := run(t, g, c.src, Options{})
		got := strings.Join(pathStrings(res.Paths), "|")
		if got != c.path {
			t.Errorf("%s: path %q, want %q", c.src, got, c.path)
			continue
		}
		if c.path == "" {
			if len(res.Nodes)+len(res.Edges) != 0 {
				t.Errorf("%s: no path but nodes %v edges %v", c.src, res.Nodes, res.Edges)
			}
			continue
		}
		if strings.Join(ids(res.Nodes), " ") != c.path || len(res.Edges) != len(res.Nodes)-1 {
			t.Errorf("%s: nodes %v edges %v", c.src, ids(res.Nodes), res.Edges)
		}
	}
	res := run(t, g, "path('db:y', 'user:alice', dir='in')", Options{})
	if res.Edges[0] != (Edge{"svc:C", "reads", "db:y"}) || res.Edges[3] != (Edge{"user:alice", "owns", "svc:A"}) {
		t.Errorf("edges of a backwards path %v", res.Edges)
	}
	// The default maximum length is Options.MaxDepth.
	if res := run(t, g, "path('user:alice', 'db:y')", Options{MaxDepth: 3}); len(res.Paths) != 0 {
		t.Errorf("path longer than MaxDepth found: %v", res.Paths)
	}
}

func TestExecuteLimits(t *testing.T) {
	g := smallGraph(t)
	ctx := context.Background()
	cases := []struct {
		src   string
		opts  Options
		limit string
		value int64
		max   int64
		msg   string
	}{
		{"rel(7hop, 'svc:A'→'*')", Options{}, LimitDepth, 7, 6, "query depth 7 exceeds the limit of 6"},
		{"rel(3hop, 'svc:A'→'*')", Options{MaxDepth: 2}, LimitDepth, 3, 2, ""},
		{"path('svc:A', 'db:x', depth=9)", Options{}, LimitDepth, 9, 6, ""},
		{"neighbors('svc:A', depth=3)", Options{MaxFanout: 1}, LimitFanout, 2, 1, "node svc:A has 2 matching edges, more than the fanout limit of 1"},
		{"neighbors('svc:A', dir='both')", Options{MaxFanout: 2}, LimitFanout, 3, 2, ""},
		{"path('svc:A', 'db:y')", Options{MaxFanout: 1}, LimitFanout, 2, 1, ""},
		{"rel(3hop, 'svc:A'→'db:*')", Options{MaxResults: 2}, LimitResults, 3, 2, "more than 2 results"},
	}
	for _, c := range cases {
		_, err := Execute(ctx, g, mustParse(t, c.src), c.opts)
		var le *LimitError
		if !errors.As(err, &le) {
			t.Errorf("%s: err %v, want a *LimitError", c.src, err)
			continue
		}
		if le.Limit != c.limit || le.Value != c.value || le.Max != c.max || !strings.Contains(le.Error(), c.msg) {
			t.Errorf("%s: %+v (%v), want %s %d/%d", c.src, le, le, c.limit, c.value, c.max)
		}
	}
	// A rel filter keeps a node under the fanout limit.
	if _, err := Execute(ctx, g, mustParse(t, "neighbors('svc:A', rel='reads')"), Options{MaxFanout: 1}); err != nil {
		t.Errorf("filtered fanout: %v", err)
	}
	// Exactly MaxResults is fine.
	if _, err := Execute(ctx, g, mustParse(t, "rel(3hop, 'svc:A'→'db:*')"), Options{MaxResults: 3}); err != nil {
		t.Errorf("results at the limit: %v", err)
	}

	// Time: a walk over a bigger graph with a deadline already passed.
	big := genGraph(t, genSpec{services: 2000, dbs: 500, datasets: 1000, users: 500, groups: 50, roles: 10, edges: 20000, seed: 3})
	_, err := Execute(ctx, big, mustParse(t, "rel(6hop, 'svc:00000'→'*', dir='both')"), Options{Timeout: time.Nanosecond, MaxResults: 1 << 20})
	var le *LimitError
	if !errors.As(err, &le) || le.Limit != LimitTime || !strings.Contains(err.Error(), "time limit") {
		t.Errorf("time limit: %v", err)
	}
	// The caller's cancellation is not a limit.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = Execute(cctx, big, mustParse(t, "rel(6hop, 'svc:00000'→'*', dir='both')"), Options{MaxResults: 1 << 20})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	// Invalid hand-built query and options.
	if _, err := Execute(ctx, g, Query{Op: OpRel, Start: "svc:A"}, Options{}); err == nil {
		t.Error("incomplete query accepted")
	}
	if _, err := Execute(ctx, g, mustParse(t, "neighbors('svc:A')"), Options{Limit: -1}); err == nil {
		t.Error("negative limit accepted")
	}
}

func TestExecuteTimeLimitWhoCan(t *testing.T) {
	g := genGraph(t, genSpec{services: 100, dbs: 10, datasets: 10, users: 500, groups: 10, roles: 10, edges: 800, seed: 5})
	_, err := Execute(context.Background(), g, mustParse(t, "who_can('entity.update', 'dataset:00001')"),
		Options{Authorizer: slowAuthorizer{}, Timeout: 30 * time.Millisecond})
	var le *LimitError
	if !errors.As(err, &le) || le.Limit != LimitTime || le.Max != 30 {
		t.Errorf("who_can time limit: %v", err)
	}
}

type slowAuthorizer struct{}

func (slowAuthorizer) Decide(ctx context.Context, in policy.Input) policy.Decision {
	select {
	case <-ctx.Done():
	case <-time.After(2 * time.Millisecond):
	}
	return fakeAuthorizer{}.Decide(ctx, in)
}

func TestPagination(t *testing.T) {
	g := genGraph(t, genSpec{services: 2000, dbs: 500, datasets: 1000, users: 500, groups: 50, roles: 10, edges: 20000, seed: 3})
	ctx := context.Background()
	for _, src := range []string{
		"rel(3hop, 'svc:00000'→'*')",
		"rel(3hop, 'svc:00000'→'db:*', dir='both')",
		"neighbors('svc:00001', depth=2, dir='both')",
	} {
		q := mustParse(t, src)
		walk := func(limit int) (all []string, paths []Path, pages int) {
			cursor := ""
			for {
				res, err := Execute(ctx, g, q, Options{Limit: limit, Cursor: cursor, MaxResults: 1 << 20})
				if err != nil {
					t.Fatalf("%s page %d: %v", src, pages, err)
				}
				if len(res.Nodes) > limit || len(res.Paths) != len(res.Nodes) {
					t.Fatalf("%s: page of %d nodes, %d paths", src, len(res.Nodes), len(res.Paths))
				}
				all = append(all, ids(res.Nodes)...)
				paths = append(paths, res.Paths...)
				pages++
				if res.NextCursor == "" {
					return all, paths, pages
				}
				cursor = res.NextCursor
			}
		}
		want, wantPaths, _ := walk(MaxLimit)
		got, gotPaths, pages := walk(37)
		if len(want) < 100 {
			t.Fatalf("%s: only %d results, the test needs several pages", src, len(want))
		}
		if !slices.Equal(got, want) || !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
			t.Errorf("%s: %d pages gave %d ids, want %d, sorted, without duplicates", src, pages, len(got), len(want))
		}
		if !reflect.DeepEqual(gotPaths, wantPaths) {
			t.Errorf("%s: paths differ between page sizes", src)
		}
		t.Logf("%s: %d results in %d pages", src, len(got), pages)
		// A cursor only works with its own query.
		first, _ := Execute(ctx, g, q, Options{Limit: 5, MaxResults: 1 << 20})
		other := mustParse(t, "rel(2hop, 'svc:00000'→'*')")
		if _, err := Execute(ctx, g, other, Options{Cursor: first.NextCursor}); !errors.Is(err, ErrInvalidCursor) {
			t.Errorf("cursor reused with another query: %v", err)
		}
	}
	q := mustParse(t, "neighbors('svc:00001')")
	for _, c := range []string{"!!!", "AAAA", encodeCursor(q, "x")[:5]} {
		if _, err := Execute(ctx, g, q, Options{Cursor: c}); !errors.Is(err, ErrInvalidCursor) {
			t.Errorf("cursor %q: %v", c, err)
		}
	}
	// Limit is capped at MaxLimit.
	res, err := Execute(ctx, g, mustParse(t, "rel(6hop, 'svc:00000'→'*', dir='both')"), Options{Limit: 5000, MaxResults: 1 << 20})
	if err != nil || len(res.Nodes) != MaxLimit || res.NextCursor == "" {
		t.Errorf("limit cap: %d nodes, cursor %q, %v", len(res.Nodes), res.NextCursor, err)
	}
}

// TestPathIsShortest checks the bidirectional search against a plain BFS
// from the start, and that every path it returns is a real walk.
func TestPathIsShortest(t *testing.T) {
	g := genGraph(t, genSpec{services: 400, dbs: 100, datasets: 300, users: 200, groups: 30, roles: 10, edges: 3000, seed: 21})
	r := rand.New(rand.NewPCG(1, 1))
	all := make([]string, 0, len(g.nodes))
	for _, n := range g.nodes {
		all = append(all, n.id)
	}
	dirs := []Dir{DirOut, DirIn, DirBoth}
	relSets := [][]string{nil, {"depends_on"}, {"depends_on", "reads", "owns"}}
	found := 0
	for i := range 3000 {
		q := Query{Op: OpPath, Start: all[r.IntN(len(all))], Target: all[r.IntN(len(all))],
			Dir: dirs[i%3], Rels: relSets[(i/3)%3], Depth: 1 + r.IntN(6)}
		q = q.normalize()
		res, err := Execute(context.Background(), g, q, Options{})
		if err != nil {
			t.Fatal(err)
		}
		// Reference: BFS from the start only.
		want := -1
		x := &execution{g: g, q: q, opts: Options{MaxFanout: 1 << 30}, ctx: context.Background(), deadline: time.Now().Add(time.Hour)}
		sc := getScratch(len(g.nodes))
		start, target := g.index[q.Start], g.index[q.Target]
		if start == target {
			want = 0
		} else {
			x.bfs(sc, start, q.Depth, func(n uint32) (bool, error) {
				if n == target {
					want = len(x.pathTo(sc, n).Edges)
					return true, nil
				}
				return false, nil
			})
		}
		scratchPool.Put(sc)
		if want < 0 {
			if len(res.Paths) != 0 {
				t.Fatalf("%s: found %v, BFS found none", q, res.Paths)
			}
			continue
		}
		if len(res.Paths) != 1 || len(res.Paths[0].Edges) != want {
			t.Fatalf("%s: got %v, want length %d", q, res.Paths, want)
		}
		found++
		p := res.Paths[0]
		if p.Nodes[0] != q.Start || p.Nodes[len(p.Nodes)-1] != q.Target || len(p.Nodes) != len(p.Edges)+1 {
			t.Fatalf("%s: malformed path %v", q, p)
		}
		for k, e := range p.Edges {
			fwd := e.From == p.Nodes[k] && e.To == p.Nodes[k+1]
			back := e.To == p.Nodes[k] && e.From == p.Nodes[k+1]
			ok := (fwd && q.Dir != DirIn) || (back && q.Dir != DirOut)
			if !ok || !g.HasEdge(e.From, e.Rel, e.To) || (len(q.Rels) > 0 && !slices.Contains(q.Rels, e.Rel)) {
				t.Fatalf("%s: step %d %v is not a valid edge of the walk %v", q, k, e, p)
			}
		}
	}
	if found < 300 {
		t.Errorf("only %d of 3000 random pairs connected; the test needs more", found)
	}
}
