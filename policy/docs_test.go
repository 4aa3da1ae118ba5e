package policy_test

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/companyos/companyos/policy"
)

// ruleNames are the rationale rule names of a bundle's Rego, read with a
// regexp so that the test does not share the renderer's parser.
var ruleLiteralRE = regexp.MustCompile(`"rule":\s*"([A-Za-z0-9_.:-]+)"`)

func TestRenderDocs(t *testing.T) {
	bundle := bundleCopy(t)
	bundle[policy.AttributesFile] = &fstest.MapFile{Data: []byte(`
principal:
  - {name: region, type: string, source: "entity attribute", description: "where the principal works"}
  - {name: roles, type: "list of strings", source: "token + entity", description: "granted roles", example: [admin]}
resource:
  - {name: classification, type: string, source: "entity attribute", description: "drives dual control"}
`)}
	_, scenarios := embeddedScenarios(t)
	files, err := policy.RenderDocs(t.Context(), policy.DocsConfig{Bundle: bundle, Scenarios: scenarios})
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.New(t.Context(), policy.Config{Bundle: bundle})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"index.html", "actions.html", "attributes.html", "tests.html", "data.html", "source-authz.rego.html"} {
		if len(files[name]) == 0 {
			t.Errorf("%s not rendered (have %v)", name, slices.Sorted(maps.Keys(files)))
		}
	}
	index := string(files["index.html"])
	// html/template writes "+" as "&#43;".
	for _, want := range []string{strings.ReplaceAll(e.Version(), "+", "&#43;"), e.Hash(), "CompanyOS authorization"} {
		if !strings.Contains(index, want) {
			t.Errorf("index.html lacks %q", want)
		}
	}

	// Every rule named in a rationale, and every "# --- Rule:" section, has
	// a page linked from the index.
	var names []string
	for _, f := range []string{"authz.rego"} {
		src := string(bundle[f].Data)
		for _, m := range ruleLiteralRE.FindAllStringSubmatch(src, -1) {
			names = append(names, m[1])
		}
		for _, m := range regexp.MustCompile(`(?m)^# --- (?:Rule|Obligation): ([A-Za-z0-9_]+)`).FindAllStringSubmatch(src, -1) {
			names = append(names, m[1])
		}
	}
	slices.Sort(names)
	names = slices.Compact(names)
	if len(names) < 4 {
		t.Fatalf("found only %v in authz.rego", names)
	}
	for _, n := range names {
		page := "rule-" + n + ".html"
		body, ok := files[page]
		if !ok {
			t.Errorf("no page %s", page)
			continue
		}
		if !strings.Contains(index, `href="`+page+`"`) {
			t.Errorf("index.html does not link %s", page)
		}
		if !strings.Contains(string(body), "<code>"+n+"</code>") {
			t.Errorf("%s does not name the rule", page)
		}
	}
	admin := string(files["rule-admin_all.html"])
	for _, want := range []string{"may perform every known action", "Grants (result true)", "grants contains", "&#34;admin&#34; in input.principal.roles"} {
		if !strings.Contains(admin, want) {
			t.Errorf("rule-admin_all.html lacks %q", want)
		}
	}

	actions := string(files["actions.html"])
	for _, want := range []string{"<code>entity.create</code>", "<code>editor</code>", "may create and update entities in their own region"} {
		if !strings.Contains(actions, want) {
			t.Errorf("actions.html lacks %q", want)
		}
	}
	attrs := string(files["attributes.html"])
	for _, want := range []string{"<h2>principal</h2>", "<h2>resource</h2>", "drives dual control", `{&#34;example&#34;:[&#34;admin&#34;]}`} {
		if !strings.Contains(attrs, want) {
			t.Errorf("attributes.html lacks %q:\n%s", want, attrs)
		}
	}
	if tests := string(files["tests.html"]); !strings.Contains(tests, scenarios[0].Name) || !strings.Contains(tests, "test_admin_may_do_every_action") {
		t.Errorf("tests.html lacks scenarios or Rego tests")
	}
	for name, body := range files {
		if bytes.Contains(body, []byte("<script")) || bytes.Contains(body, []byte(`src="http`)) || bytes.Contains(body, []byte(`<link rel="stylesheet"`)) {
			t.Errorf("%s uses scripts or external assets", name)
		}
	}

	// Deterministic.
	again, err := policy.RenderDocs(t.Context(), policy.DocsConfig{Bundle: bundle, Scenarios: scenarios})
	if err != nil {
		t.Fatal(err)
	}
	if !maps.EqualFunc(files, again, bytes.Equal) {
		t.Error("two renderings of the same bundle differ")
	}

	dir := t.TempDir()
	if err := policy.WriteDocs(dir, files); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "index.html")); err != nil || !bytes.Equal(got, files["index.html"]) {
		t.Errorf("WriteDocs: %v", err)
	}
}

func TestRenderDocsWithoutAttributesAndAnnotations(t *testing.T) {
	bundle := fstest.MapFS{
		"VERSION":   {Data: []byte("2.0.0")},
		"data.json": {Data: []byte(`{"companyos": {"actions": ["a.b"]}}`)},
		"x.rego": {Data: []byte(`# METADATA
# title: Tiny
package companyos.authz

# METADATA
# title: Everything is allowed
# description: Only for this test.
# custom:
#   owner: security
decision := {"allow": true, "reasons": [{"rule": "yes", "result": true}]}
`)},
	}
	files, err := policy.RenderDocs(t.Context(), policy.DocsConfig{Bundle: bundle})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := files["attributes.html"]; ok {
		t.Error("attributes.html rendered without an attribute catalog")
	}
	if strings.Contains(string(files["index.html"]), `href="attributes.html"`) {
		t.Error("nav links a missing attributes page")
	}
	page := string(files["rule-decision.html"])
	for _, want := range []string{"Everything is allowed", "Only for this test.", "owner", "security"} {
		if !strings.Contains(page, want) {
			t.Errorf("rule-decision.html lacks %q:\n%s", want, page)
		}
	}
}
