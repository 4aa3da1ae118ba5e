package policy_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/companyos/companyos/policy"
	"github.com/companyos/companyos/schemas"
)

// starterEngine is the embedded starter bundle with a generous timeout:
// these tests check decisions, and on a loaded 2-core machine under -race
// an evaluation can wait longer than the default 50ms for a CPU.
func starterEngine(t testing.TB) *policy.Engine {
	t.Helper()
	bundle, err := fs.Sub(schemas.Policy, "policy")
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.New(t.Context(), policy.Config{Bundle: bundle, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e
}

func principal(roles []string, region any) policy.Principal {
	attrs := map[string]any{}
	if region != nil {
		attrs["region"] = region
	}
	// A fresh MFA login, so step-up never applies in the base-rule cases
	// (TestStepUpAndDualControl covers it).
	return policy.Principal{ID: "user:alice", Kind: "user", Roles: roles, Attrs: attrs, Exists: true, MFA: true, MFAAgeSeconds: 1}
}

func resource(region any) policy.Resource {
	attrs := map[string]any{}
	if region != nil {
		attrs["region"] = region
	}
	return policy.Resource{ID: "doc:1", Kind: "document", Attrs: attrs, Exists: true}
}

var allActions = []string{"entity.create", "entity.update", "entity.delete", "relation.link", "relation.unlink"}

// Step-up and dual control deny with typed obligations that say what to do.
func TestStepUpAndDualControl(t *testing.T) {
	e := starterEngine(t)
	noMFA := principal([]string{"admin"}, nil)
	noMFA.MFA, noMFA.MFAAgeSeconds = false, -1
	d := e.Decide(t.Context(), policy.Input{Action: "entity.delete", Tenant: "acme", Principal: noMFA, Resource: resource("eu")})
	if d.Allow || len(d.Obligations) != 1 || d.Obligations[0].Type != "mfa_required" {
		t.Fatalf("delete without MFA: %+v", d)
	}
	prod := policy.Resource{ID: "dataset:prod", Kind: "dataset", Attrs: map[string]any{"classification": "restricted"}, Exists: true}
	approvals := func(who ...string) map[string]any {
		var as []any
		for _, w := range who {
			as = append(as, map[string]any{"approver": w, "approver_roles": []any{"approver"}})
		}
		return map[string]any{"requester": "user:alice", "approvals": as}
	}
	for _, c := range []struct {
		name  string
		ctx   map[string]any
		allow bool
	}{
		{"no approvals", approvals(), false},
		{"one approval", approvals("user:bob"), false},
		{"same approver twice", approvals("user:bob", "user:bob"), false},
		{"requester approving itself", approvals("user:alice", "user:bob"), false},
		{"two distinct approvers", approvals("user:bob", "user:carol"), true},
	} {
		d := e.Decide(t.Context(), policy.Input{Action: "entity.delete", Tenant: "acme", Principal: principal([]string{"admin"}, nil), Resource: prod, Context: c.ctx})
		if d.Allow != c.allow {
			t.Errorf("%s: allow %v, want %v: %+v", c.name, d.Allow, c.allow, d)
		}
		if !c.allow && (len(d.Obligations) != 1 || d.Obligations[0].Type != "approvals_required") {
			t.Errorf("%s: obligations %+v, want approvals_required", c.name, d.Obligations)
		}
	}
}

func TestDecideStarterBundle(t *testing.T) {
	e := starterEngine(t)
	type tc struct {
		name  string
		in    policy.Input
		allow bool
		rules []string // rules in the rationale, sorted
		want  []string // substrings that some reason message must contain
	}
	var cases []tc
	for _, a := range allActions {
		target := &policy.Resource{ID: "doc:2", Attrs: map[string]any{"region": "us"}, Exists: true}
		cases = append(cases, tc{
			name:  "admin " + a,
			in:    policy.Input{Action: a, Tenant: "acme", Principal: principal([]string{"admin"}, nil), Resource: resource("us"), Target: target, Relation: "owns"},
			allow: true,
			rules: []string{"admin_all"},
			want:  []string{fmt.Sprintf(`role "admin" may perform %q`, a)},
		})
		cases = append(cases, tc{
			name:  "no roles " + a,
			in:    policy.Input{Action: a, Tenant: "acme", Principal: principal(nil, "eu"), Resource: resource("eu")},
			rules: []string{"admin_all", "default_deny", "editor_same_region"},
			want:  []string{fmt.Sprintf("no rule allows action %q for roles []", a), `principal lacks role "editor"`},
		})
	}
	cases = append(cases,
		tc{
			name:  "editor same region create",
			in:    policy.Input{Action: "entity.create", Tenant: "acme", Principal: principal([]string{"editor"}, "eu"), Resource: resource("eu")},
			allow: true,
			rules: []string{"editor_same_region"},
			want:  []string{`in own region "eu"`},
		},
		tc{
			name:  "editor same region update",
			in:    policy.Input{Action: "entity.update", Tenant: "acme", Principal: principal([]string{"viewer", "editor"}, "eu"), Resource: resource("eu")},
			allow: true,
			rules: []string{"editor_same_region"},
		},
		tc{
			name:  "editor other region",
			in:    policy.Input{Action: "entity.update", Tenant: "acme", Principal: principal([]string{"editor"}, "eu"), Resource: resource("us")},
			rules: []string{"admin_all", "default_deny", "editor_same_region"},
			want:  []string{`principal region "eu" != resource region "us"`, `no rule allows action "entity.update" for roles [editor]`},
		},
		tc{
			name:  "editor delete",
			in:    policy.Input{Action: "entity.delete", Tenant: "acme", Principal: principal([]string{"editor"}, "eu"), Resource: resource("eu")},
			rules: []string{"admin_all", "default_deny", "editor_same_region"},
			want:  []string{`action "entity.delete" is not granted to role "editor"`},
		},
		tc{
			name:  "editor link",
			in:    policy.Input{Action: "relation.link", Tenant: "acme", Principal: principal([]string{"editor"}, "eu"), Resource: resource("eu"), Target: &policy.Resource{ID: "doc:2", Attrs: map[string]any{"region": "eu"}}, Relation: "parent"},
			rules: []string{"admin_all", "default_deny", "editor_same_region"},
		},
		tc{
			name:  "editor without region",
			in:    policy.Input{Action: "entity.create", Tenant: "acme", Principal: principal([]string{"editor"}, nil), Resource: resource("eu")},
			rules: []string{"admin_all", "default_deny", "editor_same_region"},
			want:  []string{"principal has no region"},
		},
		tc{
			name:  "editor, resource without region",
			in:    policy.Input{Action: "entity.create", Tenant: "acme", Principal: principal([]string{"editor"}, "eu"), Resource: resource(nil)},
			rules: []string{"admin_all", "default_deny", "editor_same_region"},
			want:  []string{"resource has no region"},
		},
		tc{
			name:  "editor, both regions empty strings",
			in:    policy.Input{Action: "entity.create", Tenant: "acme", Principal: principal([]string{"editor"}, ""), Resource: resource("")},
			rules: []string{"admin_all", "default_deny", "editor_same_region"},
			want:  []string{"principal has no region", "resource has no region"},
		},
		tc{
			name:  "editor, numeric regions",
			in:    policy.Input{Action: "entity.create", Tenant: "acme", Principal: principal([]string{"editor"}, 1), Resource: resource(1)},
			rules: []string{"admin_all", "default_deny", "editor_same_region"},
		},
		tc{
			name:  "editor, nil attrs",
			in:    policy.Input{Action: "entity.create", Tenant: "acme", Principal: policy.Principal{ID: "user:x", Roles: []string{"editor"}}, Resource: policy.Resource{ID: "doc:1"}},
			rules: []string{"admin_all", "default_deny", "editor_same_region"},
		},
		tc{
			name:  "admin, unknown action",
			in:    policy.Input{Action: "tenant.destroy", Tenant: "acme", Principal: principal([]string{"admin"}, nil), Resource: resource(nil)},
			rules: []string{"default_deny", "editor_same_region", "known_action"},
			want:  []string{`unknown action "tenant.destroy"`},
		},
		tc{
			name:  "empty input",
			rules: []string{"admin_all", "default_deny", "editor_same_region", "known_action"},
		},
	)

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := e.Decide(t.Context(), c.in)
			if d.Allow != c.allow {
				t.Errorf("Allow = %v, want %v; rationale %+v", d.Allow, c.allow, d.Rationale)
			}
			if d.PolicyVersion != e.Version() {
				t.Errorf("PolicyVersion = %q, want %q", d.PolicyVersion, e.Version())
			}
			if d.Obligations == nil || len(d.Obligations) != 0 {
				t.Errorf("Obligations = %#v, want non-nil empty", d.Obligations)
			}
			var rules []string
			for _, r := range d.Rationale {
				if r.Result != c.allow {
					t.Errorf("reason %+v has Result %v in a decision with Allow %v", r, r.Result, c.allow)
				}
				if len(rules) == 0 || rules[len(rules)-1] != r.Rule {
					rules = append(rules, r.Rule)
				}
			}
			if !reflect.DeepEqual(rules, c.rules) {
				t.Errorf("rules = %q, want %q; rationale %+v", rules, c.rules, d.Rationale)
			}
			for _, w := range c.want {
				if !hasMessage(d, w) {
					t.Errorf("no reason message contains %q; rationale %+v", w, d.Rationale)
				}
			}
			assertSorted(t, d)
		})
	}
}

func hasMessage(d policy.Decision, sub string) bool {
	for _, r := range d.Rationale {
		if strings.Contains(r.Message, sub) {
			return true
		}
	}
	return false
}

func assertSorted(t *testing.T, d policy.Decision) {
	t.Helper()
	for i := 1; i < len(d.Rationale); i++ {
		a, b := d.Rationale[i-1], d.Rationale[i]
		if a.Rule > b.Rule || (a.Rule == b.Rule && a.Message > b.Message) {
			t.Errorf("rationale not sorted at %d: %+v before %+v", i, a, b)
		}
	}
}

func TestDecideIsDeterministic(t *testing.T) {
	e := starterEngine(t)
	in := policy.Input{Action: "entity.update", Tenant: "acme", Principal: principal([]string{"editor", "auditor", "viewer"}, "eu"), Resource: resource("us")}
	first, err := json.Marshal(e.Decide(t.Context(), in))
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		again, _ := json.Marshal(e.Decide(t.Context(), in))
		if string(again) != string(first) {
			t.Fatalf("decision bytes differ:\n%s\n%s", first, again)
		}
	}
}

func TestDecideConcurrent(t *testing.T) {
	e := starterEngine(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 100 {
				region := []string{"eu", "us"}[(i+j)%2]
				d := e.Decide(context.Background(), policy.Input{Action: "entity.create", Principal: principal([]string{"editor"}, "eu"), Resource: resource(region)})
				if d.Allow != (region == "eu") {
					t.Errorf("region %s: Allow = %v: %+v", region, d.Allow, d.Rationale)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestVersionAndHash(t *testing.T) {
	e, err := policy.Default(t.Context())
	if err != nil {
		t.Fatalf("Default: %v", err)
	}
	if !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(e.Hash()) {
		t.Errorf("Hash = %q", e.Hash())
	}
	if want := "0.1.0+" + e.Hash()[:len("sha256:")+12]; e.Version() != want {
		t.Errorf("Version = %q, want %q", e.Version(), want)
	}

	// The bundle read from disk hashes like the embedded one: same files,
	// same hash, no matter which fs.FS delivers them.
	disk, err := policy.New(t.Context(), policy.Config{Bundle: os.DirFS("../schemas/policy")})
	if err != nil {
		t.Fatal(err)
	}
	if disk.Hash() != e.Hash() {
		t.Errorf("disk hash %s != embedded hash %s", disk.Hash(), e.Hash())
	}

	// Any byte change changes the hash, including in tests and VERSION.
	base := minimalBundle(`decision := {"allow": false, "reasons": []}`)
	h := func(fsys fs.FS) string {
		t.Helper()
		e, err := policy.New(t.Context(), policy.Config{Bundle: fsys})
		if err != nil {
			t.Fatal(err)
		}
		return e.Hash()
	}
	h0 := h(base)
	if h(base) != h0 {
		t.Error("hash is not deterministic")
	}
	changed := maps.Clone(base)
	changed["VERSION"] = &fstest.MapFile{Data: []byte("0.1.1\n")}
	if h(changed) == h0 {
		t.Error("changing VERSION did not change the hash")
	}
	withIgnored := maps.Clone(base)
	withIgnored[".manifest"] = &fstest.MapFile{Data: []byte("{}")}
	withIgnored["_notes/x.rego"] = &fstest.MapFile{Data: []byte("not rego")}
	if h(withIgnored) != h0 {
		t.Error("dot/underscore files (which go:embed drops) changed the hash")
	}
}

// minimalBundle is a bundle whose authz module has the given body.
func minimalBundle(body string) fstest.MapFS {
	return fstest.MapFS{
		"VERSION":       {Data: []byte("1.2.3\n")},
		"authz.rego":    {Data: []byte("package companyos.authz\n\n" + body + "\n")},
		"data.json":     {Data: []byte(`{"companyos": {"actions": ["entity.create"]}}`)},
		"lib/x.rego":    {Data: []byte("package companyos.lib\n\nanswer := 42\n")},
		"lib/data.json": {Data: []byte(`{"limit": 3}`)},
	}
}

func TestFailClosed(t *testing.T) {
	in := policy.Input{Action: "entity.create", Tenant: "acme", Principal: principal([]string{"admin"}, "eu"), Resource: resource("eu")}
	cases := []struct {
		name    string
		body    string
		timeout time.Duration
		ctx     func(context.Context) context.Context
		want    string
	}{
		{
			name: "undefined decision",
			body: `decision := {"allow": true, "reasons": []} if input.action == "nothing"`,
			want: "data.companyos.authz.decision is undefined",
		},
		{
			name: "conflicting outputs",
			body: "decision := {\"allow\": true, \"reasons\": [{\"rule\": \"a\", \"result\": true}]} if input.action\n" +
				"decision := {\"allow\": false, \"reasons\": []} if input.tenant",
			want: "evaluation error: ",
		},
		{
			name: "builtin error",
			body: `decision := {"allow": true, "reasons": [{"rule": "x", "result": to_number(input.tenant) > 0}]}`,
			want: "evaluation error: ",
		},
		{
			name:    "timeout",
			body:    `decision := {"allow": true, "reasons": []} if count({[a, b] | some a in numbers.range(1, 100000); some b in numbers.range(1, 100000)}) > 0`,
			timeout: 20 * time.Millisecond,
			want:    "evaluation deadline exceeded (timeout 20ms)",
		},
		{
			name: "caller cancelled",
			body: `decision := {"allow": true, "reasons": [{"rule": "a", "result": true}]}`,
			ctx: func(ctx context.Context) context.Context {
				ctx, cancel := context.WithCancel(ctx)
				cancel()
				return ctx
			},
			want: "evaluation cancelled: context canceled",
		},
		{
			name: "decision not an object",
			body: `decision := true`,
			want: "malformed decision: want an object, got boolean",
		},
		{
			name: "allow not a boolean",
			body: `decision := {"allow": "yes", "reasons": []}`,
			want: `malformed decision: "allow" must be a boolean, got string`,
		},
		{
			name: "reasons missing",
			body: `decision := {"allow": true}`,
			want: `malformed decision: "reasons" must be an array or set, got undefined`,
		},
		{
			name: "reason without rule",
			body: `decision := {"allow": true, "reasons": [{"result": true}]}`,
			want: `malformed decision: reasons[0]: "rule" must be a non-empty string`,
		},
		{
			name: "allow without a granting reason",
			body: `decision := {"allow": true, "reasons": [{"rule": "r", "result": false}]}`,
			want: `malformed decision: "allow" is true but no reason has "result": true`,
		},
		{
			name: "bad obligation",
			body: `decision := {"allow": true, "reasons": [{"rule": "r", "result": true}], "obligations": [{"params": {}}]}`,
			want: `malformed decision: obligations[0]: "type" must be a non-empty string`,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := policy.New(t.Context(), policy.Config{Bundle: minimalBundle(c.body), Timeout: c.timeout})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			ctx := t.Context()
			if c.ctx != nil {
				ctx = c.ctx(ctx)
			}
			start := time.Now()
			d := e.Decide(ctx, in)
			if c.timeout > 0 {
				if elapsed := time.Since(start); elapsed > 50*c.timeout {
					t.Errorf("Decide took %s with timeout %s", elapsed, c.timeout)
				}
			}
			if d.Allow {
				t.Fatalf("Allow = true, want fail-closed deny: %+v", d)
			}
			if len(d.Rationale) != 1 || d.Rationale[0].Rule != policy.FailClosedRule || d.Rationale[0].Result {
				t.Fatalf("Rationale = %+v, want one fail_closed reason", d.Rationale)
			}
			if !strings.Contains(d.Rationale[0].Message, c.want) {
				t.Errorf("message = %q, want it to contain %q", d.Rationale[0].Message, c.want)
			}
			if d.PolicyVersion != e.Version() || d.Obligations == nil {
				t.Errorf("PolicyVersion %q / Obligations %#v", d.PolicyVersion, d.Obligations)
			}
		})
	}
}

func TestDecideObligationsAndSorting(t *testing.T) {
	body := `decision := {
	"allow": true,
	"reasons": [
		{"rule": "b", "result": true, "message": "2"},
		{"rule": "a", "result": false, "message": "9"},
		{"rule": "b", "result": true, "message": "1", "attributes": {"n": 1}},
	],
	"obligations": {{"type": "mfa_required", "params": {"max_age_s": 300}}, {"type": "audit"}},
}`
	e, err := policy.New(t.Context(), policy.Config{Bundle: minimalBundle(body)})
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.Marshal(e.Decide(t.Context(), policy.Input{}))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"allow":true,"rationale":[` +
		`{"rule":"a","result":false,"message":"9"},` +
		`{"rule":"b","result":true,"message":"1","attributes":{"n":1}},` +
		`{"rule":"b","result":true,"message":"2"}],` +
		`"obligations":[{"type":"audit"},{"type":"mfa_required","params":{"max_age_s":300}}],` +
		`"policy_version":"` + e.Version() + `"}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestNewRejectsBadBundles(t *testing.T) {
	good := minimalBundle(`decision := {"allow": false, "reasons": []}`)
	with := func(changes map[string]string, remove ...string) fstest.MapFS {
		b := maps.Clone(good)
		for k, v := range changes {
			b[k] = &fstest.MapFile{Data: []byte(v)}
		}
		for _, k := range remove {
			delete(b, k)
		}
		return b
	}
	cases := []struct {
		name   string
		bundle fs.FS
		want   []string
	}{
		{
			name:   "does not compile",
			bundle: with(map[string]string{"authz.rego": "package companyos.authz\n\ndecision := x\n"}),
			want:   []string{"compile", "authz.rego:3", "var x is unsafe"},
		},
		{
			name:   "does not parse",
			bundle: with(map[string]string{"authz.rego": "package companyos.authz\n\ndecision := {\n"}),
			want:   []string{"authz.rego:4", "rego_parse_error"},
		},
		{
			name:   "non-deterministic builtin",
			bundle: with(map[string]string{"authz.rego": "package companyos.authz\n\ndecision := {\"allow\": time.now_ns() > 0, \"reasons\": []}\n"}),
			want:   []string{"time.now_ns"},
		},
		{
			name: "failing rego test",
			bundle: with(map[string]string{"authz_test.rego": "package companyos.authz_test\n\n" +
				"test_passes if { not data.companyos.authz.decision.allow }\n\n" +
				"test_admin_allowed if { data.companyos.authz.decision.allow with input as {\"action\": \"entity.create\"} }\n\n" +
				"test_errors if { to_number(\"x\") }\n"}),
			want: []string{"2 of 3 policy tests failed", "data.companyos.authz_test.test_admin_allowed (authz_test.rego:5)", "test_errors"},
		},
		{
			name:   "test does not compile",
			bundle: with(map[string]string{"authz_test.rego": "package companyos.authz_test\n\ntest_x if { y }\n"}),
			want:   []string{"compile tests", "var y is unsafe"},
		},
		{
			name:   "missing VERSION",
			bundle: with(nil, "VERSION"),
			want:   []string{"VERSION: missing"},
		},
		{
			name:   "VERSION not semver",
			bundle: with(map[string]string{"VERSION": "v1.0\n"}),
			want:   []string{`"v1.0" is not a semantic version`},
		},
		{
			name:   "VERSION with build metadata",
			bundle: with(map[string]string{"VERSION": "1.0.0+local"}),
			want:   []string{`"1.0.0+local" must not carry build metadata`},
		},
		{
			name:   "bad data.json",
			bundle: with(map[string]string{"data.json": "[1, 2]"}),
			want:   []string{"data.json: must be a JSON object"},
		},
		{
			name:   "trailing garbage in data.json",
			bundle: with(map[string]string{"data.json": `{"a": 1} x`}),
			want:   []string{"data.json: invalid JSON"},
		},
		{
			name:   "no policy modules",
			bundle: fstest.MapFS{"VERSION": {Data: []byte("0.1.0")}},
			want:   []string{"no policy modules"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := policy.New(t.Context(), policy.Config{Bundle: c.bundle})
			if err == nil {
				t.Fatalf("New succeeded (version %s), want error", e.Version())
			}
			if testing.Verbose() {
				t.Log(err)
			}
			if !errors.Is(err, policy.ErrInvalidBundle) {
				t.Errorf("error does not wrap ErrInvalidBundle: %v", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	err := policy.Config{Timeout: -time.Second}.Validate()
	if err == nil || !strings.Contains(err.Error(), "Bundle is required") || !strings.Contains(err.Error(), "Timeout must not be negative") {
		t.Errorf("Validate() = %v, want both problems", err)
	}
	if _, err := policy.New(t.Context(), policy.Config{}); err == nil {
		t.Error("New with empty Config succeeded")
	}
	if err := (policy.Config{Bundle: fstest.MapFS{}}).Validate(); err != nil {
		t.Errorf("Validate() = %v, want nil", err)
	}
}

func ExampleEngine_Decide() {
	ctx := context.Background()
	engine, err := policy.Default(ctx)
	if err != nil {
		panic(err)
	}
	editor := policy.Principal{
		ID:     "user:alice",
		Roles:  []string{"editor"},
		Attrs:  map[string]any{"region": "eu"},
		Exists: true,
	}
	for _, region := range []string{"eu", "us"} {
		d := engine.Decide(ctx, policy.Input{
			Action:    "entity.update",
			Tenant:    "acme",
			Principal: editor,
			Resource:  policy.Resource{ID: "doc:42", Attrs: map[string]any{"region": region}, Exists: true},
		})
		fmt.Printf("resource in %s: allow=%v\n", region, d.Allow)
		for _, r := range d.Rationale {
			fmt.Printf("  %s: %s\n", r.Rule, r.Message)
		}
	}
	// Output:
	// resource in eu: allow=true
	//   editor_same_region: role "editor" may perform "entity.update" in own region "eu"
	// resource in us: allow=false
	//   admin_all: principal lacks role "admin"
	//   default_deny: no rule allows action "entity.update" for roles [editor]
	//   editor_same_region: principal region "eu" != resource region "us"
}

func BenchmarkDecide(b *testing.B) {
	e, err := policy.Default(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	inputs := map[string]policy.Input{
		"admin_allow": {Action: "entity.delete", Tenant: "acme", Principal: principal([]string{"admin"}, nil), Resource: resource("us")},
		"editor_allow": {Action: "entity.update", Tenant: "acme", Principal: principal([]string{"editor"}, "eu"),
			Resource: policy.Resource{ID: "doc:1", Kind: "document", Attrs: map[string]any{"region": "eu", "title": "Q3 plan", "owner": "user:bob", "size": 1234}, Exists: true}},
		"editor_deny_region": {Action: "entity.update", Tenant: "acme", Principal: principal([]string{"editor"}, "eu"), Resource: resource("us")},
	}
	for _, name := range []string{"admin_allow", "editor_allow", "editor_deny_region"} {
		in := inputs[name]
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				e.Decide(ctx, in)
			}
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					e.Decide(ctx, in)
				}
			})
		})
	}
}

// TestHashAlgorithm pins the documented hash so other tools can reproduce
// it: for each file in sorted path order, path, NUL, big-endian uint64
// length, content.
func TestHashAlgorithm(t *testing.T) {
	bundle := minimalBundle(`decision := {"allow": false, "reasons": []}`)
	e, err := policy.New(t.Context(), policy.Config{Bundle: bundle})
	if err != nil {
		t.Fatal(err)
	}
	paths := make([]string, 0, len(bundle))
	for p := range bundle {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	h := sha256.New()
	for _, p := range paths {
		h.Write([]byte(p + "\x00"))
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(bundle[p].Data))))
		h.Write(bundle[p].Data)
	}
	if want := "sha256:" + hex.EncodeToString(h.Sum(nil)); e.Hash() != want {
		t.Errorf("Hash = %s, want %s", e.Hash(), want)
	}
}
