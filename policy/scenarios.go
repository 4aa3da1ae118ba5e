package policy

// The scenario matrix: policy expectations kept as data next to the bundle
// (schemas/policy/scenarios), so that a policy change shows up as a reviewed
// change of expected decisions and of golden rationales rather than as an
// edit buried in Go tests.
//
// A scenario directory holds:
//
//	*.yaml           scenario files (see LoadScenarios for the format)
//	golden/<name>.json  the full decision (allow, rationale, obligations,
//	                 without policy_version) each scenario produced when the
//	                 goldens were last accepted; written by WriteGoldens
//
// Expectations (allow, obligations, optional rules and message substrings)
// are written by people and say what must hold; goldens are written by the
// tool and pin everything else, so a reworded message or a new reason is a
// visible diff.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ScenarioGoldenDir is the directory, inside a scenario directory, that
// holds the golden decisions (<scenario name>.json).
const ScenarioGoldenDir = "golden"

// DefaultScenarioTenant is the input tenant of a scenario that names none.
const DefaultScenarioTenant = "acme"

// scenarioNameRE keeps names usable as file names on every system.
var scenarioNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)

// Scenario is one row of the matrix: an input and what the decision must be.
type Scenario struct {
	Name        string      `json:"name"`
	Description string      `json:"description,omitempty"`
	File        string      `json:"file"` // the scenario file it came from
	Input       Input       `json:"input"`
	Expect      Expectation `json:"expect"`
}

// Expectation is what a scenario's decision must satisfy.
type Expectation struct {
	Allow bool `json:"allow"`
	// Obligations are the exact obligations, as JSON values in the form
	// Decision.Obligations marshals to; order does not matter. Empty means
	// the decision must carry none.
	Obligations []any `json:"obligations"`
	// Rules, when set, is the exact set of rule names in the rationale.
	Rules []string `json:"rules,omitempty"`
	// Messages, when set, must each be a substring of some rationale message.
	Messages []string `json:"messages,omitempty"`
}

// scenarioFile is the YAML form of one scenario file.
type scenarioFile struct {
	Principals map[string]map[string]any `yaml:"principals"`
	Resources  map[string]map[string]any `yaml:"resources"`
	Scenarios  []scenarioSpec            `yaml:"scenarios"`
}

type scenarioSpec struct {
	Name        string      `yaml:"name"`
	Description string      `yaml:"description"`
	Tenant      *string     `yaml:"tenant"`
	Action      string      `yaml:"action"`
	Principal   any         `yaml:"principal"`
	Resource    any         `yaml:"resource"`
	Target      any         `yaml:"target"`
	Relation    string      `yaml:"relation"`
	Context     any         `yaml:"context"`
	Expect      *expectSpec `yaml:"expect"`
}

type expectSpec struct {
	Allow       *bool    `yaml:"allow"`
	Obligations []any    `yaml:"obligations"`
	Rules       []string `yaml:"rules"`
	Messages    []string `yaml:"messages"`
}

// LoadScenarios reads every *.yaml and *.yml file at the root of fsys
// (sorted by name; the golden directory and other subdirectories are
// ignored). A file is a mapping with three optional keys:
//
//	principals:   # named principal fixtures, shared by every file
//	  editor_eu: {id: "user:eve", roles: [editor], attrs: {region: eu}}
//	resources:    # named resource fixtures, shared by every file
//	  doc_eu: {id: "doc:1", kind: document, attrs: {region: eu}}
//	scenarios:
//	  - name: entity-create-editor-same-region   # unique, [a-z0-9._-]
//	    description: why this case matters        # optional
//	    action: entity.create
//	    principal: editor_eu      # a fixture name, an inline mapping, or a
//	                              # mapping {fixture: name, <key>: override}
//	    resource: doc_eu          # same forms
//	    target: doc_us            # optional (relation.*), same forms
//	    relation: owns            # optional (relation.*)
//	    tenant: acme              # optional, default DefaultScenarioTenant
//	    context: {...}            # optional, passed as input.context
//	    expect:
//	      allow: true             # required
//	      obligations: []         # optional, default none; exact, any order
//	      rules: [editor_same_region]  # optional: exact set of rationale rules
//	      messages: ["own region"]     # optional: substrings of some message
//
// Principal and resource mappings use the JSON names of policy.Principal
// and policy.Resource; any key the engine's Input does not know is an
// error, so scenarios cannot silently test nothing. Defaults: an absent
// principal is anonymous ({id: "", roles: [], attrs: {}, exists: false});
// roles default to [] and attrs to {}; exists defaults to true when the
// id is non-empty; mfa_age_seconds (when Principal has it) defaults to 0
// with mfa and -1 without, as the API fills it.
func LoadScenarios(fsys fs.FS) ([]Scenario, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("policy: read scenarios: %w", err)
	}
	type parsed struct {
		name string
		file scenarioFile
	}
	var files []parsed
	var errs []error
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || strings.HasPrefix(n, ".") || strings.HasPrefix(n, "_") ||
			(!strings.HasSuffix(n, ".yaml") && !strings.HasSuffix(n, ".yml")) {
			continue
		}
		raw, err := fs.ReadFile(fsys, n)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
			continue
		}
		var f scenarioFile
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
			continue
		}
		files = append(files, parsed{n, f})
	}

	principals := map[string]map[string]any{}
	resources := map[string]map[string]any{}
	definedIn := map[string]string{} // "principal:name" → file
	addFixtures := func(kind, file string, src, dst map[string]map[string]any) {
		for _, name := range slices.Sorted(maps.Keys(src)) {
			if prev, dup := definedIn[kind+":"+name]; dup {
				errs = append(errs, fmt.Errorf("%s: %s fixture %q already defined in %s", file, kind, name, prev))
				continue
			}
			definedIn[kind+":"+name] = file
			dst[name] = src[name]
		}
	}
	for _, f := range files {
		addFixtures("principal", f.name, f.file.Principals, principals)
		addFixtures("resource", f.name, f.file.Resources, resources)
	}

	var out []Scenario
	seen := map[string]string{}
	for _, f := range files {
		for i, spec := range f.file.Scenarios {
			where := fmt.Sprintf("%s: scenarios[%d]", f.name, i)
			if spec.Name != "" {
				where = fmt.Sprintf("%s: scenario %q", f.name, spec.Name)
			}
			s, err := buildScenario(spec, principals, resources)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
				continue
			}
			if prev, dup := seen[s.Name]; dup {
				errs = append(errs, fmt.Errorf("%s: name already used in %s", where, prev))
				continue
			}
			seen[s.Name] = f.name
			s.File = f.name
			out = append(out, s)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("policy: invalid scenarios: %w", err)
	}
	return out, nil
}

func buildScenario(spec scenarioSpec, principals, resources map[string]map[string]any) (Scenario, error) {
	var errs []error
	switch {
	case spec.Name == "":
		errs = append(errs, errors.New("name is required"))
	case !scenarioNameRE.MatchString(spec.Name):
		errs = append(errs, fmt.Errorf("name must match %s", scenarioNameRE))
	case spec.Name == strings.TrimSuffix(dataFile, ".json"):
		// golden/data.json would be mounted as bundle data by the engine.
		errs = append(errs, fmt.Errorf("name %q is reserved", spec.Name))
	}
	if spec.Expect == nil || spec.Expect.Allow == nil {
		errs = append(errs, errors.New("expect.allow is required"))
	}
	tenant := DefaultScenarioTenant
	if spec.Tenant != nil {
		tenant = *spec.Tenant
	}
	doc := map[string]any{"action": spec.Action, "tenant": tenant}
	var err error
	if doc["principal"], err = resolveEntity("principal", spec.Principal, principals, true); err != nil {
		errs = append(errs, err)
	}
	if doc["resource"], err = resolveEntity("resource", spec.Resource, resources, false); err != nil {
		errs = append(errs, err)
	}
	if spec.Target != nil {
		if doc["target"], err = resolveEntity("target", spec.Target, resources, false); err != nil {
			errs = append(errs, err)
		}
	}
	if spec.Relation != "" {
		doc["relation"] = spec.Relation
	}
	if spec.Context != nil {
		doc["context"] = spec.Context
	}
	var in Input
	if len(errs) == 0 {
		if err := decodeStrict(doc, &in); err != nil {
			errs = append(errs, fmt.Errorf("input does not fit policy.Input: %w", err))
		}
	}
	var obligations []any
	if spec.Expect != nil {
		for i, o := range spec.Expect.Obligations {
			n, err := normalizeJSON(o)
			if err != nil {
				errs = append(errs, fmt.Errorf("expect.obligations[%d]: %w", i, err))
				continue
			}
			obligations = append(obligations, n)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Scenario{}, err
	}
	if obligations == nil {
		obligations = []any{}
	}
	rules := slices.Clone(spec.Expect.Rules)
	slices.Sort(rules)
	return Scenario{
		Name:        spec.Name,
		Description: strings.TrimSpace(spec.Description),
		Input:       in,
		Expect: Expectation{
			Allow:       *spec.Expect.Allow,
			Obligations: obligations,
			Rules:       slices.Compact(rules),
			Messages:    spec.Expect.Messages,
		},
	}, nil
}

// resolveEntity turns a fixture name, an inline mapping or a
// {fixture: name, ...overrides} mapping into the input document of a
// principal or resource, with defaults applied. An absent principal is
// anonymous; an absent resource is the zero resource.
func resolveEntity(field string, v any, fixtures map[string]map[string]any, isPrincipal bool) (map[string]any, error) {
	var m map[string]any
	switch x := v.(type) {
	case nil:
		m = map[string]any{}
	case string:
		f, ok := fixtures[x]
		if !ok {
			return nil, fmt.Errorf("%s: no fixture named %q (known: %s)", field, x, strings.Join(slices.Sorted(maps.Keys(fixtures)), ", "))
		}
		m = maps.Clone(f)
	case map[string]any:
		m = map[string]any{}
		if name, ok := x["fixture"]; ok {
			s, _ := name.(string)
			f, ok := fixtures[s]
			if !ok {
				return nil, fmt.Errorf("%s: no fixture named %v", field, name)
			}
			maps.Copy(m, f)
		}
		for k, val := range x {
			if k != "fixture" {
				m[k] = val
			}
		}
	default:
		return nil, fmt.Errorf("%s: want a fixture name or a mapping, got %T", field, v)
	}
	if _, ok := m["id"]; !ok {
		m["id"] = ""
	}
	if _, ok := m["attrs"]; !ok {
		m["attrs"] = map[string]any{}
	}
	if isPrincipal {
		if _, ok := m["roles"]; !ok {
			m["roles"] = []any{}
		}
		// As the API fills it: a fresh MFA login, or -1 without MFA.
		if _, ok := m["mfa_age_seconds"]; !ok && jsonFieldOf(Principal{}, "mfa_age_seconds") {
			if m["mfa"] == true {
				m["mfa_age_seconds"] = 0
			} else {
				m["mfa_age_seconds"] = -1
			}
		}
	}
	if _, ok := m["exists"]; !ok {
		id, _ := m["id"].(string)
		m["exists"] = id != ""
	}
	return m, nil
}

// jsonFieldOf reports whether struct v has a field with JSON name key. It
// lets scenario defaults follow the engine's Input as it grows.
func jsonFieldOf(v any, key string) bool {
	t := reflect.TypeOf(v)
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name == key {
			return true
		}
	}
	return false
}

// decodeStrict converts a generic document to v through JSON, refusing
// keys v has no field for. Numbers stay json.Number.
func decodeStrict(doc any, v any) error {
	raw, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	return dec.Decode(v)
}

// normalizeJSON converts a YAML- or Go-typed value to its JSON form
// (map[string]any, []any, json.Number, string, bool, nil).
func normalizeJSON(v any) (any, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var out any
	if err := dec.Decode(&out); err != nil {
		return nil, err
	}
	return out, nil
}

// canonicalJSON is the compact JSON of v with sorted keys and no HTML
// escaping, used to compare JSON values.
func canonicalJSON(v any) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Sprintf("<unencodable %T: %v>", v, err)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// ScenarioResult is the outcome of one scenario.
type ScenarioResult struct {
	Name     string   `json:"name"`
	File     string   `json:"file"`
	Action   string   `json:"action"`
	Pass     bool     `json:"pass"`
	Decision Decision `json:"decision"`
	// Failures lists every way the decision missed the expectation.
	Failures []string `json:"failures,omitempty"`
	// GoldenDiff is a line diff from the golden file to this decision
	// ("-" golden, "+" now); a missing golden is a failure instead.
	GoldenDiff string `json:"golden_diff,omitempty"`

	golden []byte // GoldenDecision(Decision)
}

// ScenarioReport is the outcome of a scenario run.
type ScenarioReport struct {
	PolicyVersion string           `json:"policy_version"`
	Passed        int              `json:"passed"`
	Failed        int              `json:"failed"`
	Results       []ScenarioResult `json:"results"`
	// StaleGoldens are golden files that belong to no scenario.
	StaleGoldens []string `json:"stale_goldens,omitempty"`
}

// OK reports whether every scenario passed and no golden is stale.
func (r ScenarioReport) OK() bool { return r.Failed == 0 && len(r.StaleGoldens) == 0 }

// RunScenarios decides every scenario with e and checks it against its
// expectation and, when golden is not nil, against golden/<name>.json in
// golden (the golden directory itself, not the scenario directory).
func RunScenarios(ctx context.Context, e *Engine, scenarios []Scenario, golden fs.FS) ScenarioReport {
	rep := ScenarioReport{PolicyVersion: e.Version(), Results: make([]ScenarioResult, 0, len(scenarios))}
	names := map[string]bool{}
	for _, s := range scenarios {
		names[s.Name] = true
		d := e.Decide(ctx, s.Input)
		res := ScenarioResult{Name: s.Name, File: s.File, Action: s.Input.Action, Decision: d}
		res.Failures = checkExpectation(s.Expect, d)
		res.golden = GoldenDecision(d)
		if golden != nil {
			want, err := fs.ReadFile(golden, s.Name+".json")
			switch {
			case errors.Is(err, fs.ErrNotExist):
				res.Failures = append(res.Failures, fmt.Sprintf("golden %s/%s.json is missing (accept the current decision with --update)", ScenarioGoldenDir, s.Name))
			case err != nil:
				res.Failures = append(res.Failures, fmt.Sprintf("golden %s/%s.json: %v", ScenarioGoldenDir, s.Name, err))
			case !bytes.Equal(want, res.golden):
				res.GoldenDiff = lineDiff(string(want), string(res.golden))
			}
		}
		res.Pass = len(res.Failures) == 0 && res.GoldenDiff == ""
		if res.Pass {
			rep.Passed++
		} else {
			rep.Failed++
		}
		rep.Results = append(rep.Results, res)
	}
	if golden != nil {
		entries, _ := fs.ReadDir(golden, ".") // a missing directory has no stale files
		for _, entry := range entries {
			name, ok := strings.CutSuffix(entry.Name(), ".json")
			if !entry.IsDir() && ok && !names[name] {
				rep.StaleGoldens = append(rep.StaleGoldens, entry.Name())
			}
		}
	}
	return rep
}

func checkExpectation(want Expectation, d Decision) []string {
	var fails []string
	if d.Allow != want.Allow {
		var sb strings.Builder
		fmt.Fprintf(&sb, "decision: want %s, got %s; rationale:", allowWord(want.Allow), allowWord(d.Allow))
		for _, r := range d.Rationale {
			fmt.Fprintf(&sb, "\n    %s (%t): %s", r.Rule, r.Result, r.Message)
		}
		fails = append(fails, sb.String())
	}

	gotObl := make([]string, 0, len(d.Obligations))
	if norm, err := normalizeJSON(d.Obligations); err == nil {
		list, _ := norm.([]any)
		for _, o := range list {
			gotObl = append(gotObl, canonicalJSON(o))
		}
	}
	wantObl := make([]string, 0, len(want.Obligations))
	for _, o := range want.Obligations {
		wantObl = append(wantObl, canonicalJSON(o))
	}
	slices.Sort(gotObl)
	slices.Sort(wantObl)
	if !slices.Equal(gotObl, wantObl) {
		missing, extra := multisetDiff(wantObl, gotObl)
		msg := "obligations differ"
		if len(missing) > 0 {
			msg += "\n    missing:    " + strings.Join(missing, "\n                ")
		}
		if len(extra) > 0 {
			msg += "\n    unexpected: " + strings.Join(extra, "\n                ")
		}
		fails = append(fails, msg)
	}

	if want.Rules != nil {
		var got []string
		for _, r := range d.Rationale {
			got = append(got, r.Rule)
		}
		slices.Sort(got)
		got = slices.Compact(got)
		if !slices.Equal(got, want.Rules) {
			fails = append(fails, fmt.Sprintf("rules: want [%s], got [%s]", strings.Join(want.Rules, " "), strings.Join(got, " ")))
		}
	}
	for _, m := range want.Messages {
		if !slices.ContainsFunc(d.Rationale, func(r Reason) bool { return strings.Contains(r.Message, m) }) {
			fails = append(fails, fmt.Sprintf("messages: no rationale message contains %q", m))
		}
	}
	return fails
}

func allowWord(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}

// multisetDiff returns the elements of want missing from got and the
// elements of got not in want; both inputs are sorted.
func multisetDiff(want, got []string) (missing, extra []string) {
	i, j := 0, 0
	for i < len(want) || j < len(got) {
		switch {
		case j == len(got) || (i < len(want) && want[i] < got[j]):
			missing = append(missing, want[i])
			i++
		case i == len(want) || got[j] < want[i]:
			extra = append(extra, got[j])
			j++
		default:
			i++
			j++
		}
	}
	return missing, extra
}

// GoldenDecision is the golden-file form of d: indented JSON of every
// Decision field except policy_version (which changes with any bundle
// edit), with sorted keys and a trailing newline.
func GoldenDecision(d Decision) []byte {
	norm, err := normalizeJSON(d)
	if err != nil {
		return fmt.Appendf(nil, "<unencodable decision: %v>\n", err)
	}
	if m, ok := norm.(map[string]any); ok {
		delete(m, "policy_version")
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	_ = enc.Encode(norm) // norm is plain JSON
	return b.Bytes()
}

// WriteGoldens makes dir/golden match rep: it writes the golden of every
// result whose file is missing or different and removes every *.json file
// that belongs to no result. It returns the file names written and removed.
func WriteGoldens(dir string, rep ScenarioReport) (written, removed []string, err error) {
	gdir := filepath.Join(dir, ScenarioGoldenDir)
	if err := os.MkdirAll(gdir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("policy: write goldens: %w", err)
	}
	for _, r := range rep.Results {
		name := r.Name + ".json"
		p := filepath.Join(gdir, name)
		if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, r.golden) {
			continue
		}
		if err := os.WriteFile(p, r.golden, 0o644); err != nil {
			return written, removed, fmt.Errorf("policy: write goldens: %w", err)
		}
		written = append(written, name)
	}
	entries, err := os.ReadDir(gdir)
	if err != nil {
		return written, removed, fmt.Errorf("policy: write goldens: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if e.IsDir() || !ok || slices.ContainsFunc(rep.Results, func(r ScenarioResult) bool { return r.Name == name }) {
			continue
		}
		if err := os.Remove(filepath.Join(gdir, e.Name())); err != nil {
			return written, removed, fmt.Errorf("policy: write goldens: %w", err)
		}
		removed = append(removed, e.Name())
	}
	return written, removed, nil
}

// WriteText writes a human-readable report: one line per failing scenario
// with its failures and golden diff, then a summary. With verbose, passing
// scenarios are listed too.
func (r ScenarioReport) WriteText(w io.Writer, verbose bool) error {
	var b bytes.Buffer
	for _, res := range r.Results {
		if res.Pass {
			if verbose {
				fmt.Fprintf(&b, "ok    %s (%s, %s)\n", res.Name, res.Action, allowWord(res.Decision.Allow))
			}
			continue
		}
		fmt.Fprintf(&b, "FAIL  %s (%s: %s)\n", res.Name, res.File, res.Action)
		for _, f := range res.Failures {
			fmt.Fprintf(&b, "  %s\n", f)
		}
		if res.GoldenDiff != "" {
			fmt.Fprintf(&b, "  golden %s/%s.json differs (- golden, + now):\n", ScenarioGoldenDir, res.Name)
			for line := range strings.SplitSeq(strings.TrimSuffix(res.GoldenDiff, "\n"), "\n") {
				fmt.Fprintf(&b, "    %s\n", line)
			}
		}
	}
	for _, s := range r.StaleGoldens {
		fmt.Fprintf(&b, "STALE %s/%s belongs to no scenario (remove it with --update)\n", ScenarioGoldenDir, s)
	}
	status := "ok"
	if !r.OK() {
		status = "FAIL"
	}
	fmt.Fprintf(&b, "%s: %d scenarios, %d passed, %d failed, %d stale goldens (policy %s)\n",
		status, len(r.Results), r.Passed, r.Failed, len(r.StaleGoldens), r.PolicyVersion)
	_, err := w.Write(b.Bytes())
	return err
}

// lineDiff is a minimal line diff (longest common subsequence) of two small
// texts, printing changed lines with "-"/"+" and up to 2 lines of context.
func lineDiff(a, b string) string {
	x := strings.Split(strings.TrimSuffix(a, "\n"), "\n")
	y := strings.Split(strings.TrimSuffix(b, "\n"), "\n")
	// lcs[i][j] is the LCS length of x[i:] and y[j:].
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type line struct {
		op   byte
		text string
	}
	var ops []line
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			ops = append(ops, line{' ', x[i]})
			i++
			j++
		case j < len(y) && (i == len(x) || lcs[i][j+1] >= lcs[i+1][j]):
			ops = append(ops, line{'+', y[j]})
			j++
		default:
			ops = append(ops, line{'-', x[i]})
			i++
		}
	}
	const context = 2
	var sb strings.Builder
	lastShown := -1
	for k := range ops {
		near := false
		for d := -context; d <= context; d++ {
			if k+d >= 0 && k+d < len(ops) && ops[k+d].op != ' ' {
				near = true
				break
			}
		}
		if !near {
			continue
		}
		if lastShown >= 0 && k > lastShown+1 {
			sb.WriteString("...\n")
		}
		sb.WriteByte(ops[k].op)
		sb.WriteByte(' ')
		sb.WriteString(ops[k].text)
		sb.WriteByte('\n')
		lastShown = k
	}
	if sb.Len() == 0 && a != b {
		return "(the files differ only in their final newline)\n"
	}
	return sb.String()
}
