package policy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/companyos/companyos/policy"
	"github.com/companyos/companyos/schemas"
)

var update = flag.Bool("update", false, "rewrite schemas/policy/scenarios/golden from the current decisions")

// scenarioDir is the on-disk scenario matrix, for -update.
const scenarioDir = "../schemas/policy/scenarios"

func embeddedScenarios(t testing.TB) (fs.FS, []policy.Scenario) {
	t.Helper()
	dir, err := fs.Sub(schemas.Policy, "policy/scenarios")
	if err != nil {
		t.Fatal(err)
	}
	scenarios, err := policy.LoadScenarios(dir)
	if err != nil {
		t.Fatalf("LoadScenarios: %v", err)
	}
	return dir, scenarios
}

// TestScenarioMatrix runs schemas/policy/scenarios against the embedded
// bundle, like `companyos policy test`. After an intended policy change,
// run it with -update and review the golden diff.
func TestScenarioMatrix(t *testing.T) {
	e := starterEngine(t)
	var scenarios []policy.Scenario
	var golden fs.FS
	if *update {
		var err error
		if scenarios, err = policy.LoadScenarios(os.DirFS(scenarioDir)); err != nil {
			t.Fatal(err)
		}
		rep := policy.RunScenarios(t.Context(), e, scenarios, nil)
		written, removed, err := policy.WriteGoldens(scenarioDir, rep)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("goldens written: %v, removed: %v", written, removed)
		golden = os.DirFS(filepath.Join(scenarioDir, policy.ScenarioGoldenDir))
	} else {
		var dir fs.FS
		dir, scenarios = embeddedScenarios(t)
		var err error
		if golden, err = fs.Sub(dir, policy.ScenarioGoldenDir); err != nil {
			t.Fatal(err)
		}
	}
	if len(scenarios) < 40 {
		t.Errorf("the matrix has %d scenarios, want at least 40", len(scenarios))
	}
	rep := policy.RunScenarios(t.Context(), e, scenarios, golden)
	if !rep.OK() {
		var b bytes.Buffer
		_ = rep.WriteText(&b, false)
		t.Errorf("scenario matrix fails (after an intended policy change: go test ./policy/ -run TestScenarioMatrix -update):\n%s", b.String())
	}
}

// Every command type and every catalogued action has scenarios, and so do
// the principals the issue asks for.
func TestScenarioMatrixCoversTheBasics(t *testing.T) {
	_, scenarios := embeddedScenarios(t)
	catalog, err := policy.ReadCatalog(starterBundle(t))
	if err != nil {
		t.Fatal(err)
	}
	byAction := map[string]int{}
	var anonymous, unknown int
	for _, s := range scenarios {
		byAction[s.Input.Action]++
		if s.Input.Principal.ID == "" && len(s.Input.Principal.Roles) == 0 {
			anonymous++
		}
		if !catalog.Has(s.Input.Action) {
			unknown++
		}
	}
	for _, a := range catalog.Actions {
		if byAction[a.Name] == 0 {
			t.Errorf("no scenario for action %q", a.Name)
		}
	}
	if anonymous == 0 || unknown == 0 {
		t.Errorf("want scenarios with an anonymous principal and an unknown action; got %d and %d", anonymous, unknown)
	}
}

func starterBundle(t testing.TB) fs.FS {
	t.Helper()
	b, err := fs.Sub(schemas.Policy, "policy")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadScenariosFormat(t *testing.T) {
	fsys := fstest.MapFS{
		"a.yaml": {Data: []byte(`
principals:
  ed: {id: "user:ed", roles: [editor], attrs: {region: eu}}
resources:
  doc: {id: "doc:1", kind: document, attrs: {region: eu}}
scenarios:
  - name: fixture-form
    action: entity.create
    principal: ed
    resource: doc
    expect:
      allow: true
      obligations: [{type: mfa_required, params: {max_age_seconds: 300}}]
      rules: [b, a, a]
  - name: override-form
    action: relation.link
    principal: {fixture: ed, mfa: true}
    resource: {id: "team:1"}
    target: doc
    relation: owns
    tenant: globex
    expect: {allow: false}
`)},
		"b.yml": {Data: []byte(`
scenarios:
  - name: anonymous
    action: entity.delete
    expect: {allow: false}
`)},
		"golden/anonymous.json": {Data: []byte(`{}`)},
		"notes.txt":             {Data: []byte(`ignored`)},
	}
	got, err := policy.LoadScenarios(fsys)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("got %d scenarios, want 3", len(got))
	}
	s := got[0]
	if s.Name != "fixture-form" || s.File != "a.yaml" || s.Input.Tenant != policy.DefaultScenarioTenant ||
		s.Input.Principal.ID != "user:ed" || !s.Input.Principal.Exists || s.Input.Resource.Attrs["region"] != "eu" {
		t.Errorf("fixture-form: %+v", s)
	}
	if obl, _ := json.Marshal(s.Expect.Obligations); string(obl) != `[{"params":{"max_age_seconds":300},"type":"mfa_required"}]` {
		t.Errorf("obligations = %s", obl)
	}
	if strings.Join(s.Expect.Rules, ",") != "a,b" {
		t.Errorf("rules = %v, want sorted and deduplicated", s.Expect.Rules)
	}
	o := got[1]
	if !o.Input.Principal.MFA || o.Input.Principal.Attrs["region"] != "eu" || o.Input.Target == nil ||
		o.Input.Target.ID != "doc:1" || o.Input.Relation != "owns" || o.Input.Tenant != "globex" || !o.Input.Resource.Exists {
		t.Errorf("override-form: %+v", o.Input)
	}
	a := got[2]
	if a.Input.Principal.ID != "" || a.Input.Principal.Exists || a.Input.Principal.Roles == nil || a.Expect.Obligations == nil {
		t.Errorf("anonymous: %+v", a)
	}
}

func TestLoadScenariosRejects(t *testing.T) {
	for name, tc := range map[string]struct {
		files map[string]string
		want  string
	}{
		"unknown scenario key": {map[string]string{"a.yaml": "scenarios:\n- {name: x, actoin: entity.create, expect: {allow: false}}\n"}, "actoin"},
		"unknown input field":  {map[string]string{"a.yaml": "scenarios:\n- {name: x, principal: {id: u, rolez: [a]}, expect: {allow: false}}\n"}, "rolez"},
		"missing allow":        {map[string]string{"a.yaml": "scenarios:\n- {name: x, expect: {}}\n"}, "expect.allow is required"},
		"missing expect":       {map[string]string{"a.yaml": "scenarios:\n- {name: x}\n"}, "expect.allow is required"},
		"bad name":             {map[string]string{"a.yaml": "scenarios:\n- {name: 'Has Space', expect: {allow: false}}\n"}, "name must match"},
		"reserved name":        {map[string]string{"a.yaml": "scenarios:\n- {name: data, expect: {allow: false}}\n"}, "reserved"},
		"duplicate name": {map[string]string{
			"a.yaml": "scenarios:\n- {name: x, expect: {allow: false}}\n",
			"b.yaml": "scenarios:\n- {name: x, expect: {allow: false}}\n",
		}, "already used in a.yaml"},
		"unknown fixture":   {map[string]string{"a.yaml": "scenarios:\n- {name: x, principal: nobody, expect: {allow: false}}\n"}, `no fixture named "nobody"`},
		"duplicate fixture": {map[string]string{"a.yaml": "principals: {p: {id: a}}\n", "b.yaml": "principals: {p: {id: b}}\n"}, "already defined in a.yaml"},
		"input context":     {map[string]string{"a.yaml": "scenarios:\n- {name: x, context: {now: 1}, expect: {allow: false}}\n"}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for n, c := range tc.files {
				fsys[n] = &fstest.MapFile{Data: []byte(c)}
			}
			_, err := policy.LoadScenarios(fsys)
			if tc.want == "" {
				// context is accepted only once policy.Input has a Context
				// field; until then it must be refused, not dropped.
				if !hasJSONField(policy.Input{}, "context") && err == nil {
					t.Fatal("context accepted although policy.Input has no context field")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// hasJSONField reports whether struct v has a field with JSON name key.
func hasJSONField(v any, key string) bool {
	t := reflect.TypeOf(v)
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name == key {
			return true
		}
	}
	return false
}

func TestRunScenariosReportsMismatches(t *testing.T) {
	e := starterEngine(t)
	fsys := fstest.MapFS{"a.yaml": {Data: []byte(`
principals:
  admin: {id: "user:root", roles: [admin]}
scenarios:
  - name: wrong-decision
    action: entity.create
    principal: admin
    expect: {allow: false}
  - name: wrong-obligations
    action: entity.create
    principal: admin
    expect: {allow: true, obligations: [{type: mfa_required}]}
  - name: wrong-rules-and-message
    action: entity.create
    principal: admin
    expect: {allow: true, rules: [editor_same_region], messages: [nope]}
  - name: golden-differs
    action: entity.create
    principal: admin
    expect: {allow: true}
  - name: golden-missing
    action: entity.create
    principal: admin
    expect: {allow: true}
  - name: all-good
    action: entity.create
    principal: admin
    expect: {allow: true, rules: [admin_all], messages: ['may perform "entity.create"']}
`)}}
	scenarios, err := policy.LoadScenarios(fsys)
	if err != nil {
		t.Fatal(err)
	}
	// Accept all current decisions into a golden dir, then tamper with one.
	dir := t.TempDir()
	rep := policy.RunScenarios(t.Context(), e, scenarios, nil)
	if _, _, err := policy.WriteGoldens(dir, rep); err != nil {
		t.Fatal(err)
	}
	gdir := filepath.Join(dir, policy.ScenarioGoldenDir)
	good, err := os.ReadFile(filepath.Join(gdir, "golden-differs.json"))
	if err != nil {
		t.Fatal(err)
	}
	tampered := strings.Replace(string(good), `may perform`, `can do`, 1)
	if err := os.WriteFile(filepath.Join(gdir, "golden-differs.json"), []byte(tampered), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(gdir, "golden-missing.json")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gdir, "stale.json"), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	rep = policy.RunScenarios(t.Context(), e, scenarios, os.DirFS(gdir))
	if rep.OK() || rep.Passed != 1 || rep.Failed != 5 || len(rep.StaleGoldens) != 1 {
		t.Fatalf("passed %d failed %d stale %v, want 1, 5, [stale.json]", rep.Passed, rep.Failed, rep.StaleGoldens)
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text, true); err != nil {
		t.Fatal(err)
	}
	out := text.String()
	for _, want := range []string{
		"FAIL  wrong-decision", "decision: want deny, got allow", "admin_all (true)",
		"FAIL  wrong-obligations", `missing:    {"type":"mfa_required"}`,
		"rules: want [editor_same_region], got [admin_all]", `no rationale message contains "nope"`,
		"- " + tamperedLine(tampered), "+ ",
		"golden/golden-missing.json is missing",
		"STALE golden/stale.json",
		"ok    all-good",
		"FAIL: 6 scenarios, 1 passed, 5 failed, 1 stale goldens",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}

	// --update semantics: goldens fixed, stale removed; expectation
	// failures remain.
	written, removed, err := policy.WriteGoldens(dir, rep)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(written, ",") != "golden-differs.json,golden-missing.json" || strings.Join(removed, ",") != "stale.json" {
		t.Errorf("written %v removed %v", written, removed)
	}
	rep = policy.RunScenarios(t.Context(), e, scenarios, os.DirFS(gdir))
	if rep.Failed != 3 || len(rep.StaleGoldens) != 0 {
		t.Errorf("after update: failed %d stale %v, want 3 expectation failures and no stale goldens", rep.Failed, rep.StaleGoldens)
	}
	if _, err := os.Stat(filepath.Join(gdir, "stale.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale golden not removed: %v", err)
	}
}

func tamperedLine(golden string) string {
	for _, l := range strings.Split(golden, "\n") {
		if strings.Contains(l, "can do") {
			return l
		}
	}
	return ""
}

func TestGoldenDecisionIsStable(t *testing.T) {
	d := policy.Decision{
		Allow:         true,
		Rationale:     []policy.Reason{{Rule: "r", Result: true, Message: `a "<quoted>" & b`, Attributes: map[string]any{"z": 1, "a": 2}}},
		Obligations:   []policy.Obligation{},
		PolicyVersion: "0.1.0+sha256:000000000000",
	}
	got := string(policy.GoldenDecision(d))
	want := `{
  "allow": true,
  "obligations": [],
  "rationale": [
    {
      "attributes": {
        "a": 2,
        "z": 1
      },
      "message": "a \"<quoted>\" & b",
      "result": true,
      "rule": "r"
    }
  ]
}
`
	if got != want {
		t.Errorf("GoldenDecision =\n%s\nwant\n%s", got, want)
	}
}
