package commands

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/policy"
)

var allow = policy.Decision{Allow: true, PolicyVersion: "test"}
var deny = policy.Decision{Allow: false, PolicyVersion: "test"}

// fixture: svc:A and db:orders exist, svc:A -depends_on-> db:orders.
func fixtureState(t *testing.T) *TenantState {
	t.Helper()
	st := NewTenantState("t1")
	for _, c := range []*events.Change{
		{Op: events.OpEntityPut, Entity: &events.Entity{ID: "svc:A", Kind: "service", Attrs: map[string]any{"region": "us"}, Version: 1}},
		{Op: events.OpEntityPut, Entity: &events.Entity{ID: "db:orders", Kind: "db", Attrs: map[string]any{}, Version: 3}},
		{Op: events.OpEntityPut, Entity: &events.Entity{ID: "svc:gone", Kind: "service", Version: 2, Deleted: true}},
		{Op: events.OpRelationLink, Relation: &events.Relation{From: "svc:A", Rel: "depends_on", To: "db:orders"}},
	} {
		if err := st.ApplyChange(c); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func mustCmd(t *testing.T, body string) (Command, any) {
	t.Helper()
	c, err := DecodeCommand([]byte(body))
	if err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	p, _ := c.Validate()
	return c, p
}

func TestDecide(t *testing.T) {
	cases := []struct {
		name     string
		body     string
		decision policy.Decision
		status   int
		verdict  string // receipt decision, "" = rejected
		version  uint64
		problem  string // problem type suffix
		check    func(t *testing.T, r Result)
	}{
		{name: "create allowed", body: `{"tenant":"t1","type":"entity.create","expected_version":0,"payload":{"id":"svc:B","kind":"service","attrs":{"region":"eu"}}}`,
			decision: allow, status: 201, verdict: "allow", version: 1,
			check: func(t *testing.T, r Result) {
				if r.Change.Op != events.OpEntityPut || r.Change.Entity.Attrs["region"] != "eu" {
					t.Fatalf("change = %+v", r.Change)
				}
			}},
		{name: "policy deny wins over missing entity", body: `{"tenant":"t1","type":"entity.update","payload":{"id":"svc:nope","attrs":{"a":1}}}`,
			decision: deny, status: 403, verdict: "deny", problem: "policy-denied",
			check: func(t *testing.T, r Result) {
				if r.Change != nil {
					t.Fatal("deny must not change state")
				}
			}},
		{name: "duplicate create", body: `{"tenant":"t1","type":"entity.create","payload":{"id":"svc:A","kind":"service"}}`,
			decision: allow, status: 409, problem: "already-exists"},
		{name: "create with wrong expected_version", body: `{"tenant":"t1","type":"entity.create","expected_version":4,"payload":{"id":"svc:C","kind":"service"}}`,
			decision: allow, status: 409, problem: "version-conflict"},
		{name: "re-create after delete continues versions", body: `{"tenant":"t1","type":"entity.create","payload":{"id":"svc:gone","kind":"service"}}`,
			decision: allow, status: 201, verdict: "allow", version: 3},
		{name: "update patch", body: `{"tenant":"t1","type":"entity.update","expected_version":1,"payload":{"id":"svc:A","attrs":{"region":null,"owner":"team-a"}}}`,
			decision: allow, status: 201, verdict: "allow", version: 2,
			check: func(t *testing.T, r Result) {
				a := r.Change.Entity.Attrs
				if _, ok := a["region"]; ok || a["owner"] != "team-a" {
					t.Fatalf("attrs after patch = %v", a)
				}
			}},
		{name: "update version conflict", body: `{"tenant":"t1","type":"entity.update","expected_version":7,"payload":{"id":"svc:A","attrs":{"x":1}}}`,
			decision: allow, status: 409, problem: "version-conflict",
			check: func(t *testing.T, r Result) {
				if r.Problem.CurrentVer == nil || *r.Problem.CurrentVer != 1 {
					t.Fatalf("current_version = %v", r.Problem.CurrentVer)
				}
			}},
		{name: "update not found", body: `{"tenant":"t1","type":"entity.update","payload":{"id":"svc:nope","attrs":{"x":1}}}`,
			decision: allow, status: 404, problem: "not-found"},
		{name: "update deleted is not found", body: `{"tenant":"t1","type":"entity.update","payload":{"id":"svc:gone","attrs":{"x":1}}}`,
			decision: allow, status: 404, problem: "not-found"},
		{name: "delete with relations refused", body: `{"tenant":"t1","type":"entity.delete","payload":{"id":"db:orders"}}`,
			decision: allow, status: 409, problem: "has-relations"},
		{name: "delete with cascade unlinks", body: `{"tenant":"t1","type":"entity.delete","expected_version":3,"payload":{"id":"db:orders","cascade":true}}`,
			decision: allow, status: 201, verdict: "allow", version: 4,
			check: func(t *testing.T, r Result) {
				if !r.Change.Entity.Deleted || len(r.Change.Unlinked) != 1 || r.Change.Unlinked[0].From != "svc:A" {
					t.Fatalf("change = %+v", r.Change)
				}
			}},
		{name: "delete not found", body: `{"tenant":"t1","type":"entity.delete","payload":{"id":"svc:nope"}}`,
			decision: allow, status: 404, problem: "not-found"},
		{name: "link", body: `{"tenant":"t1","type":"relation.link","payload":{"from":"db:orders","rel":"owned_by","to":"svc:A"}}`,
			decision: allow, status: 201, verdict: "allow"},
		{name: "link duplicate", body: `{"tenant":"t1","type":"relation.link","payload":{"from":"svc:A","rel":"depends_on","to":"db:orders"}}`,
			decision: allow, status: 409, problem: "already-exists"},
		{name: "link missing target", body: `{"tenant":"t1","type":"relation.link","payload":{"from":"svc:A","rel":"depends_on","to":"db:nope"}}`,
			decision: allow, status: 404, problem: "not-found",
			check: func(t *testing.T, r Result) {
				if len(r.Problem.Errors) != 1 || r.Problem.Errors[0].Field != "payload.to" {
					t.Fatalf("errors = %+v", r.Problem.Errors)
				}
			}},
		{name: "unlink", body: `{"tenant":"t1","type":"relation.unlink","payload":{"from":"svc:A","rel":"depends_on","to":"db:orders"}}`,
			decision: allow, status: 201, verdict: "allow"},
		{name: "unlink missing", body: `{"tenant":"t1","type":"relation.unlink","payload":{"from":"svc:A","rel":"calls","to":"db:orders"}}`,
			decision: allow, status: 404, problem: "not-found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := fixtureState(t)
			before := len(st.Relations)
			cmd, payload := mustCmd(t, tc.body)
			r := Decide(st, cmd, payload, tc.decision)
			if r.Status != tc.status || r.Decision != tc.verdict {
				t.Fatalf("Decide = status %d decision %q (%+v), want %d %q", r.Status, r.Decision, r.Problem, tc.status, tc.verdict)
			}
			if r.Version != tc.version {
				t.Errorf("version = %d, want %d", r.Version, tc.version)
			}
			if tc.problem != "" && (r.Problem == nil || !strings.HasSuffix(r.Problem.Type, "/"+tc.problem)) {
				t.Errorf("problem = %+v, want type %s", r.Problem, tc.problem)
			}
			if tc.verdict == "" && r.Change != nil {
				t.Error("a rejection must not carry a change")
			}
			if len(st.Relations) != before {
				t.Error("Decide mutated the state")
			}
			if tc.check != nil {
				tc.check(t, r)
			}
			// Applying an allowed change must succeed and be visible.
			if r.Change != nil {
				if err := st.ApplyChange(r.Change); err != nil {
					t.Fatalf("apply: %v", err)
				}
			}
		})
	}
}

func TestPolicyInputMergesRoles(t *testing.T) {
	st := fixtureState(t)
	_ = st.ApplyChange(&events.Change{Op: events.OpEntityPut, Entity: &events.Entity{ID: "user:alice", Kind: "user",
		Attrs: map[string]any{"roles": []any{"editor"}, "region": "us"}, Version: 1}})
	cmd, payload := mustCmd(t, `{"tenant":"t1","type":"relation.link","payload":{"from":"svc:A","rel":"calls","to":"db:orders"}}`)
	in := PolicyInput(st, Principal{ID: "user:alice", Roles: []string{"auditor", "editor"}}, cmd, payload, time.Now())
	if got := strings.Join(in.Principal.Roles, ","); got != "auditor,editor" {
		t.Errorf("roles = %s", got)
	}
	if !in.Principal.Exists || in.Principal.Attrs["region"] != "us" {
		t.Errorf("principal = %+v", in.Principal)
	}
	if in.Resource.ID != "svc:A" || !in.Resource.Exists || in.Target == nil || in.Target.ID != "db:orders" || in.Relation != "calls" {
		t.Errorf("input = %+v", in)
	}
	if _, err := json.Marshal(in); err != nil {
		t.Fatal(err)
	}
}

// The starter bundle end to end through Decide.
func TestDecideWithStarterPolicy(t *testing.T) {
	engine, err := policy.Default(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	st := fixtureState(t)
	_ = st.ApplyChange(&events.Change{Op: events.OpEntityPut, Entity: &events.Entity{ID: "user:ed", Kind: "user",
		Attrs: map[string]any{"roles": []any{"editor"}, "region": "us"}, Version: 1}})
	for _, tc := range []struct {
		principal Principal
		body      string
		status    int
	}{
		{Principal{ID: "user:root", Roles: []string{"admin"}, MFA: true, AuthTime: time.Now()}, `{"tenant":"t1","type":"entity.delete","payload":{"id":"svc:A","cascade":true}}`, http.StatusCreated},
		{Principal{ID: "user:root", Roles: []string{"admin"}}, `{"tenant":"t1","type":"entity.delete","payload":{"id":"svc:A","cascade":true}}`, http.StatusForbidden},
		{Principal{ID: "user:ed"}, `{"tenant":"t1","type":"entity.update","payload":{"id":"svc:A","attrs":{"x":1}}}`, http.StatusCreated},
		{Principal{ID: "user:ed"}, `{"tenant":"t1","type":"entity.create","payload":{"id":"svc:Z","kind":"service","attrs":{"region":"eu"}}}`, http.StatusForbidden},
		{Principal{ID: "user:ed"}, `{"tenant":"t1","type":"entity.delete","payload":{"id":"svc:A"}}`, http.StatusForbidden},
		{Principal{ID: "user:nobody"}, `{"tenant":"t1","type":"entity.create","payload":{"id":"svc:Y","kind":"service"}}`, http.StatusForbidden},
	} {
		cmd, payload := mustCmd(t, tc.body)
		d := engine.Decide(t.Context(), PolicyInput(st, tc.principal, cmd, payload, time.Now()))
		if r := Decide(st, cmd, payload, d); r.Status != tc.status {
			t.Errorf("%s %s: status %d, want %d (rationale %+v)", tc.principal.ID, cmd.Type, r.Status, tc.status, d.Rationale)
		}
	}
}
