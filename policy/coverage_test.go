package policy_test

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/companyos/companyos/commands"
	"github.com/companyos/companyos/policy"
)

// bundleCopy copies the embedded bundle into a MapFS that tests may edit.
func bundleCopy(t testing.TB) fstest.MapFS {
	t.Helper()
	src := starterBundle(t)
	out := fstest.MapFS{}
	err := fs.WalkDir(src, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(src, p)
		out[p] = &fstest.MapFile{Data: data}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// editData applies edit to data.json's data.companyos object.
func editData(t testing.TB, b fstest.MapFS, edit func(companyos map[string]any)) {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(b["data.json"].Data, &doc); err != nil {
		t.Fatal(err)
	}
	edit(doc["companyos"].(map[string]any))
	raw, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	b["data.json"] = &fstest.MapFile{Data: raw}
}

func privilegedOf(t testing.TB, bundle fs.FS, extra ...string) []string {
	t.Helper()
	c, err := policy.ReadCatalog(bundle)
	if err != nil {
		t.Fatal(err)
	}
	return append(append(slices.Clone(commands.Types), c.Privileged()...), extra...)
}

func TestCoverageEmbeddedBundle(t *testing.T) {
	bundle := starterBundle(t)
	_, scenarios := embeddedScenarios(t)
	rep, err := policy.Coverage(t.Context(), bundle, privilegedOf(t, bundle), scenarios)
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text, 90); err != nil {
		t.Fatal(err)
	}
	if err := rep.Check(90); err != nil {
		t.Errorf("embedded bundle: %v\n%s", err, text.String())
	}
	for _, typ := range commands.Types {
		if !slices.ContainsFunc(rep.Gates, func(g policy.Gate) bool { return g.Action == typ && g.Gated }) {
			t.Errorf("command type %s is not reported gated:\n%s", typ, text.String())
		}
	}
	sum := 0
	for _, f := range rep.Lines.Files {
		sum += f.Covered + f.NotCovered
	}
	if sum != rep.Lines.Covered+rep.Lines.NotCovered {
		t.Errorf("totals %d+%d are not the sum over policy files (%d)", rep.Lines.Covered, rep.Lines.NotCovered, sum)
	}
	if rep.RegoTests == 0 || rep.Scenarios != len(scenarios) || len(rep.Lines.Files) == 0 {
		t.Errorf("report: %d rego tests, %d scenarios, %d files", rep.RegoTests, rep.Scenarios, len(rep.Lines.Files))
	}
	for _, f := range rep.Lines.Files {
		if strings.HasSuffix(f.File, "_test.rego") {
			t.Errorf("test module %s is in the line coverage", f.File)
		}
		if f.Covered == 0 {
			t.Errorf("%s: nothing covered", f.File)
		}
	}
	for _, want := range []string{"privileged actions gated: ", "Rego line coverage: ", "authz.rego: "} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}
	var back policy.CoverageReport
	raw, _ := json.Marshal(rep)
	if err := json.Unmarshal(raw, &back); err != nil || back.Lines.Covered != rep.Lines.Covered {
		t.Errorf("JSON round trip: %v", err)
	}
}

// A new privileged type fails the gate until the policy catalogues it and
// the matrix has an allow and a deny for it.
func TestCoverageNewPrivilegedTypeWithoutRuleFails(t *testing.T) {
	_, scenarios := embeddedScenarios(t)

	// Not in the catalog at all.
	bundle := bundleCopy(t)
	rep, err := policy.Coverage(t.Context(), bundle, privilegedOf(t, bundle, "tenant.destroy"), scenarios)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Ungated, []string{"tenant.destroy"}) || rep.GatedPercent >= 100 {
		t.Fatalf("ungated = %v (%.1f%%), want [tenant.destroy]", rep.Ungated, rep.GatedPercent)
	}
	err = rep.Check(0)
	if err == nil || !strings.Contains(err.Error(), "tenant.destroy") {
		t.Errorf("Check = %v, want it to name tenant.destroy", err)
	}
	g := rep.Gates[slices.IndexFunc(rep.Gates, func(g policy.Gate) bool { return g.Action == "tenant.destroy" })]
	if g.InCatalog || !g.AnonymousDenied || !g.RolelessDenied || g.ScenarioAllows != 0 {
		t.Errorf("gate = %+v", g)
	}

	// Catalogued (so admin_all grants it), but no scenario exercises it.
	const newType = "widget.frobnicate"
	editData(t, bundle, func(c map[string]any) {
		c["actions"] = append(c["actions"].([]any), newType)
	})
	rep, err = policy.Coverage(t.Context(), bundle, privilegedOf(t, bundle, newType), scenarios)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Ungated, []string{newType}) {
		t.Fatalf("ungated = %v, want [%s]", rep.Ungated, newType)
	}
	g = rep.Gates[slices.IndexFunc(rep.Gates, func(g policy.Gate) bool { return g.Action == newType })]
	if !g.InCatalog || len(g.Problems) != 2 || !strings.Contains(strings.Join(g.Problems, ";"), "no scenario is allowed") {
		t.Errorf("gate = %+v", g)
	}
}

// A rule that lets anybody through is caught even with scenarios.
func TestCoverageOpenRuleFails(t *testing.T) {
	bundle := bundleCopy(t)
	delete(bundle, "authz_test.rego") // its tests would (rightly) refuse this bundle
	bundle["open.rego"] = &fstest.MapFile{Data: []byte(`package companyos.authz

grants contains {"rule": "open_pricing", "result": true, "message": "anyone may set prices"} if input.action == "pricing.set"
`)}
	_, scenarios := embeddedScenarios(t)
	rep, err := policy.Coverage(t.Context(), bundle, []string{"pricing.set", "entity.create"}, scenarios)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Ungated, []string{"pricing.set"}) {
		t.Fatalf("ungated = %v, want [pricing.set]", rep.Ungated)
	}
	g := rep.Gates[slices.IndexFunc(rep.Gates, func(g policy.Gate) bool { return g.Action == "pricing.set" })]
	if g.AnonymousDenied || g.RolelessDenied || !strings.Contains(strings.Join(g.Problems, ";"), "anonymous principal is allowed: granted by open_pricing") {
		t.Errorf("gate = %+v", g)
	}
}

// Line coverage is measured and thresholded: no scenarios still leaves
// the Rego tests; an uncovered rule shows up with its lines.
func TestCoverageLines(t *testing.T) {
	bundle := bundleCopy(t)
	bundle["dead.rego"] = &fstest.MapFile{Data: []byte(`package companyos.authz

never_used if {
	input.action == "x"
	input.principal.id == "y"
}
`)}
	rep, err := policy.Coverage(t.Context(), bundle, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.GatedPercent != 100 || len(rep.Gates) != 0 {
		t.Errorf("no privileged actions: gated %.1f%%, %d gates", rep.GatedPercent, len(rep.Gates))
	}
	i := slices.IndexFunc(rep.Lines.Files, func(f policy.FileLineCoverage) bool { return f.File == "dead.rego" })
	if i < 0 {
		t.Fatalf("dead.rego missing from %+v", rep.Lines.Files)
	}
	dead := rep.Lines.Files[i]
	if dead.Covered != 0 || dead.NotCovered != 3 || len(dead.MissedAt) != 1 || dead.MissedAt[0].Start != 3 || dead.MissedAt[0].End != 5 {
		t.Errorf("dead.rego = %+v, want lines 3-5 not covered", dead)
	}
	if err := rep.Check(100); err == nil || !strings.Contains(err.Error(), "below the minimum 100.0%") {
		t.Errorf("Check(100) = %v", err)
	}
}

func TestReadCatalogForms(t *testing.T) {
	for name, data := range map[string]string{
		"names":   `{"companyos": {"actions": ["b", "a"], "privileged_actions": ["a", "zzz"], "roles": {"r": {"actions": ["b"], "regional": true}}}}`,
		"objects": `{"companyos": {"actions": [{"name": "b"}, {"name": "a", "privileged": true}], "roles": {"r": {"actions": ["b"], "regional": true}}}}`,
		"map":     `{"companyos": {"actions": {"a": {"privileged": true}, "b": {}}, "roles": {"r": {"actions": ["b"], "regional": true}}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			b := fstest.MapFS{
				"VERSION":   {Data: []byte("1.0.0")},
				"data.json": {Data: []byte(data)},
				"p.rego":    {Data: []byte("package p\n\nx := 1\n")},
			}
			c, err := policy.ReadCatalog(b)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Actions) != 2 || c.Actions[0].Name != "a" || !c.Has("b") || c.Has("zzz") {
				t.Errorf("actions = %+v", c.Actions)
			}
			if !slices.Equal(c.Privileged(), []string{"a"}) {
				t.Errorf("privileged = %v", c.Privileged())
			}
			if !slices.Equal(c.Actions[1].Roles, []string{"r"}) || len(c.Roles) != 1 || c.Roles[0].Other["regional"] != true {
				t.Errorf("roles: %+v %+v", c.Actions[1], c.Roles)
			}
		})
	}
}
