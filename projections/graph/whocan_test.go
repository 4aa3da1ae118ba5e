package graph

import (
	"context"
	"errors"
	"io/fs"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/policy"
	"github.com/companyos/companyos/schemas"
)

func TestPrincipalRoles(t *testing.T) {
	g := smallGraph(t)
	cases := []struct {
		id    string
		roles []string
		paths map[string][]Edge
	}{
		{"user:alice", []string{"editor", "viewer"}, map[string][]Edge{"editor": {
			{"user:alice", "member_of", "group:eng"}, {"group:eng", "member_of", "group:platform"}, {"group:platform", "has_role", "role:editor"}}}},
		{"user:bob", []string{"admin"}, map[string][]Edge{}},
		{"user:carol", []string{"admin"}, map[string][]Edge{"admin": {{"user:carol", "has_role", "role:admin"}}}},
		{"user:dave", []string{}, map[string][]Edge{}},
		{"service:ci", []string{"editor"}, map[string][]Edge{"editor": {
			{"service:ci", "member_of", "group:eng"}, {"group:eng", "member_of", "group:platform"}, {"group:platform", "has_role", "role:editor"}}}},
		{"user:nobody", []string{}, map[string][]Edge{}},
	}
	for _, c := range cases {
		roles, paths := PrincipalRoles(g, c.id)
		if !reflect.DeepEqual(roles, c.roles) || !reflect.DeepEqual(paths, c.paths) {
			t.Errorf("PrincipalRoles(%s) = %v %v, want %v %v", c.id, roles, paths, c.roles, c.paths)
		}
	}
}

func TestPrincipalRolesDerivation(t *testing.T) {
	g := NewGraph("acme")
	for _, c := range []*events.Change{
		put("user:u", "user", 1, map[string]any{"roles": []any{"b", "a", "b", 7}}),
		put("role:named", "role", 1, map[string]any{"name": "renamed"}),
		put("team:x", "team", 1, map[string]any{"name": "not-a-role"}),
		put("role:gone", "role", 1, nil),
		link("user:u", "has_role", "role:named"),
		link("user:u", "has_role", "team:x"), // a named node counts: its name is the role
		link("user:u", "has_role", "svc:nameless"),
		link("user:u", "has_role", "role:gone"),
		link("user:u", "has_role", "role:a"), // also an attribute role
		del("role:gone", "role", 2),
		// A member_of cycle terminates; a chain deeper than MaxGroupDepth is cut.
		link("user:u", "member_of", "group:0"),
		link("group:0", "member_of", "group:1"),
		link("group:1", "member_of", "group:0"),
	} {
		if _, err := g.ApplyChange(c); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= MaxGroupDepth+1; i++ {
		g.ApplyChange(link(groupID(i), "member_of", groupID(i+1)))
		g.ApplyChange(link(groupID(i+1), "has_role", "role:depth"+string(rune('0'+i+1))))
	}
	roles, paths := PrincipalRoles(g, "user:u")
	// group:k is k+1 groups deep, so group:8 (role depth8) is past MaxGroupDepth.
	want := []string{"a", "b", "depth2", "depth3", "depth4", "depth5", "depth6", "depth7", "not-a-role", "renamed"}
	if !slices.Equal(roles, want) {
		t.Errorf("roles = %v, want %v", roles, want)
	}
	if got := sortedKeys(paths); !slices.Equal(got, []string{"a", "depth2", "depth3", "depth4", "depth5", "depth6", "depth7", "not-a-role", "renamed"}) {
		t.Errorf("role paths for %v", got)
	}
	if len(paths["depth7"]) != MaxGroupDepth+1 {
		t.Errorf("path to depth7: %v", paths["depth7"])
	}
}

func groupID(i int) string { return "group:" + string(rune('0'+i)) }

// recordingAuthorizer wraps another and keeps every input.
type recordingAuthorizer struct {
	next Authorizer
	mu   sync.Mutex
	ins  map[string]policy.Input
}

func (r *recordingAuthorizer) Decide(ctx context.Context, in policy.Input) policy.Decision {
	r.mu.Lock()
	if r.ins == nil {
		r.ins = map[string]policy.Input{}
	}
	r.ins[in.Principal.ID] = in
	r.mu.Unlock()
	return r.next.Decide(ctx, in)
}

func TestWhoCanFakeAuthorizer(t *testing.T) {
	g := smallGraph(t)
	rec := &recordingAuthorizer{next: fakeAuthorizer{}}
	res := run(t, g, "who_can('export', 'dataset:prod')", Options{Authorizer: rec})
	if got := principalIDs(res.Principals); !slices.Equal(got, []string{"user:bob", "user:carol", "user:erin", "user:frank"}) {
		t.Fatalf("who_can export = %v", got)
	}
	erin := res.Principals[2]
	wantGrant := []Grant{{Rel: "can_export", Path: []Edge{{"user:erin", "member_of", "group:exporters"}, {"group:exporters", "can_export", "dataset:prod"}}}}
	if !reflect.DeepEqual(erin.Grants, wantGrant) || erin.Rationale[0].Rule != "fake_grant" || erin.PolicyVersion != "fake" {
		t.Errorf("erin = %+v", erin)
	}
	if frank := res.Principals[3]; !reflect.DeepEqual(frank.Grants, []Grant{{Rel: "can_export", Path: []Edge{{"user:frank", "can_export", "dataset:prod"}}}}) {
		t.Errorf("frank = %+v", frank)
	}
	if carol := res.Principals[1]; !reflect.DeepEqual(carol.RolePaths, map[string][]Edge{"admin": {{"user:carol", "has_role", "role:admin"}}}) {
		t.Errorf("carol = %+v", carol)
	}
	// Every principal (users and services) was asked, with the input the
	// policy expects.
	if got := sortedKeys(rec.ins); !slices.Equal(got, []string{"service:ci", "user:alice", "user:bob", "user:carol", "user:dave", "user:erin", "user:frank"}) {
		t.Errorf("asked %v", got)
	}
	alice := rec.ins["user:alice"]
	want := policy.Input{Action: "export", Tenant: "acme",
		Principal: policy.Principal{ID: "user:alice", Kind: "user", Roles: []string{"editor", "viewer"}, Exists: true, MFA: true,
			Attrs: map[string]any{"roles": "viewer", "region": "eu", GraphFactsAttr: map[string]any{"groups": []string{"group:eng", "group:platform"}, "grants": []string{}}}},
		Resource: policy.Resource{ID: "dataset:prod", Kind: "dataset", Attrs: map[string]any{"region": "eu"}, Exists: true}}
	if !reflect.DeepEqual(alice, want) {
		t.Errorf("input for alice:\n%#v\nwant\n%#v", alice, want)
	}
	if dave := rec.ins["user:dave"]; dave.Principal.Attrs[GraphFactsAttr] != nil || dave.Principal.Roles == nil {
		t.Errorf("input for dave %+v", dave.Principal)
	}
	// The graph's own attrs were not modified by adding the facts.
	if n, _ := g.Node("user:alice"); n.Attrs[GraphFactsAttr] != nil {
		t.Error("graph facts leaked into the node")
	}

	// Principal kinds are configurable; a missing resource still asks.
	res = run(t, g, "who_can('export', 'dataset:nope')", Options{Authorizer: fakeAuthorizer{}, PrincipalKinds: []string{"user"}})
	if got := principalIDs(res.Principals); !slices.Equal(got, []string{"user:bob", "user:carol"}) {
		t.Errorf("who_can on a missing resource = %v", got)
	}
	if _, err := Execute(context.Background(), g, mustParse(t, "who_can('export', 'dataset:prod')"), Options{}); !errors.Is(err, ErrNoAuthorizer) {
		t.Errorf("no authorizer: %v", err)
	}
}

func TestWhoCanStarterPolicy(t *testing.T) {
	// policy.Default is the starter bundle; its 50ms timeout is tight on a
	// loaded 2-core machine under -race, so the same bundle is loaded with a
	// longer one: the decisions are what this test checks.
	if _, err := policy.Default(context.Background()); err != nil {
		t.Fatal(err)
	}
	engine := starterEngine(t)
	g := smallGraph(t)
	cases := []struct {
		action, resource string
		want             []string
		rules            []string
	}{
		// admins (bob by attribute, carol by has_role) and alice, an editor
		// (through group:eng → group:platform) in the resource's region;
		// service:ci is an editor without a region.
		{"entity.update", "dataset:prod", []string{"user:alice", "user:bob", "user:carol"}, []string{"editor_same_region", "admin_all", "admin_all"}},
		{"entity.delete", "dataset:prod", []string{"user:bob", "user:carol"}, []string{"admin_all", "admin_all"}},
		{"entity.create", "dataset:new", []string{"user:bob", "user:carol"}, []string{"admin_all", "admin_all"}},
		// An action the policy does not know is denied to everyone, admins
		// included; a direct can_export grant does not override the policy.
		{"export", "dataset:prod", []string{}, nil},
	}
	for _, c := range cases {
		q, err := Parse("who_can($a, $r)", map[string]any{"a": c.action, "r": c.resource})
		if err != nil {
			t.Fatal(err)
		}
		res, err := Execute(context.Background(), g, q, Options{Authorizer: engine})
		if err != nil {
			t.Fatal(err)
		}
		if got := principalIDs(res.Principals); !slices.Equal(got, c.want) {
			t.Errorf("who_can(%s, %s) = %v, want %v", c.action, c.resource, got, c.want)
			continue
		}
		for i, p := range res.Principals {
			if len(p.Rationale) == 0 || p.Rationale[0].Rule != c.rules[i] || !p.Rationale[0].Result || p.PolicyVersion != engine.Version() {
				t.Errorf("who_can(%s, %s): %s rationale %+v", c.action, c.resource, p.ID, p.Rationale)
			}
		}
	}
}

// starterEngine returns the embedded bundle with a generous timeout.
func starterEngine(t testing.TB) *policy.Engine {
	t.Helper()
	bundle, err := fs.Sub(schemas.Policy, "policy")
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.New(context.Background(), policy.Config{Bundle: bundle, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestWhoCanPagination(t *testing.T) {
	g := genGraph(t, genSpec{services: 500, dbs: 100, datasets: 200, users: 3000, groups: 60, roles: 10, edges: 12000, seed: 11})
	q := mustParse(t, "who_can('export', 'dataset:00000')")
	walk := func(limit int) (all []string) {
		cursor := ""
		for {
			res, err := Execute(context.Background(), g, q, Options{Authorizer: fakeAuthorizer{}, Limit: limit, Cursor: cursor})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Principals) > limit {
				t.Fatalf("page of %d", len(res.Principals))
			}
			all = append(all, principalIDs(res.Principals)...)
			if res.NextCursor == "" {
				return all
			}
			cursor = res.NextCursor
		}
	}
	want := walk(MaxLimit)
	got := walk(7)
	if len(want) < 30 {
		t.Fatalf("only %d principals", len(want))
	}
	if !slices.Equal(got, want) || !slices.IsSorted(got) {
		t.Errorf("paged who_can: %d ids, want %d", len(got), len(want))
	}
	// Admins (every 50th user) and the holders of can_export grants.
	var grants int
	res, _ := Execute(context.Background(), g, q, Options{Authorizer: fakeAuthorizer{}, Limit: MaxLimit})
	for _, p := range res.Principals {
		if len(p.Grants) > 0 {
			grants++
		}
	}
	if grants == 0 || len(want) <= 60 {
		t.Errorf("%d principals, %d with grants", len(want), grants)
	}
}
