package policy

// Policy coverage: are the privileged actions gated, and how much of the
// Rego do the scenario matrix and the bundle's own tests exercise?

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/cover"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/tester"
)

// ToolTimeout is the evaluation timeout the policy tools (scenarios,
// coverage, docs) use instead of DefaultTimeout: they run offline, often on
// a loaded CI machine, and must not report a fail_closed timeout as a
// policy result.
const ToolTimeout = 10 * time.Second

// Catalog is what a bundle's data says about actions and roles
// (data.companyos.actions, .privileged_actions and .roles).
type Catalog struct {
	Actions []CatalogAction `json:"actions"` // sorted by name
	Roles   []CatalogRole   `json:"roles"`   // sorted by name
}

// CatalogAction is one action of the catalog.
type CatalogAction struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Privileged  bool   `json:"privileged"`
	// Roles lists the roles whose data grant names this action (roles
	// granted by a rule, such as admin, do not list actions).
	Roles []string `json:"roles,omitempty"`
}

// CatalogRole is one role of data.companyos.roles.
type CatalogRole struct {
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Actions     []string `json:"actions,omitempty"`
	// Other holds the role's remaining keys, as JSON values.
	Other map[string]any `json:"other,omitempty"`
}

// Has reports whether action is in the catalog.
func (c Catalog) Has(action string) bool {
	return slices.ContainsFunc(c.Actions, func(a CatalogAction) bool { return a.Name == action })
}

// Privileged lists the privileged actions, sorted.
func (c Catalog) Privileged() []string {
	var out []string
	for _, a := range c.Actions {
		if a.Privileged {
			out = append(out, a.Name)
		}
	}
	return out
}

// ReadCatalog reads the action and role catalog from a bundle's data.
// data.companyos.actions may be a list of names, a list of
// {name, description, privileged} objects, or an object keyed by name;
// data.companyos.privileged_actions, when present, marks byName actions
// privileged (names it lists that are not in actions stay out of the
// catalog, so Coverage reports them as ungated).
func ReadCatalog(bundle fs.FS) (Catalog, error) {
	b, err := loadBundle(bundle)
	if err != nil {
		return Catalog{}, fmt.Errorf("%w: %w", ErrInvalidBundle, err)
	}
	return catalogFromData(b.data)
}

func catalogFromData(data map[string]any) (Catalog, error) {
	var c Catalog
	root, _ := data["companyos"].(map[string]any)
	byName := map[string]*CatalogAction{}
	add := func(name string) *CatalogAction {
		if a, ok := byName[name]; ok {
			return a
		}
		a := &CatalogAction{Name: name}
		byName[name] = a
		return a
	}
	switch acts := root["actions"].(type) {
	case nil:
	case []any:
		for i, v := range acts {
			switch x := v.(type) {
			case string:
				add(x)
			case map[string]any:
				name, _ := x["name"].(string)
				if name == "" {
					return Catalog{}, fmt.Errorf("policy: data.companyos.actions[%d] has no name", i)
				}
				a := add(name)
				a.Description, _ = x["description"].(string)
				a.Privileged, _ = x["privileged"].(bool)
			default:
				return Catalog{}, fmt.Errorf("policy: data.companyos.actions[%d]: want a name or an object, got %T", i, v)
			}
		}
	case map[string]any:
		for name, v := range acts {
			a := add(name)
			if x, ok := v.(map[string]any); ok {
				a.Description, _ = x["description"].(string)
				a.Privileged, _ = x["privileged"].(bool)
			}
		}
	default:
		return Catalog{}, fmt.Errorf("policy: data.companyos.actions: want a list or an object, got %T", acts)
	}
	if priv, ok := root["privileged_actions"].([]any); ok {
		for _, v := range priv {
			if name, ok := v.(string); ok {
				if a, ok := byName[name]; ok {
					a.Privileged = true
				}
			}
		}
	}

	roles, _ := root["roles"].(map[string]any)
	for _, name := range slices.Sorted(maps.Keys(roles)) {
		r := CatalogRole{Name: name}
		if x, ok := roles[name].(map[string]any); ok {
			for k, v := range x {
				switch k {
				case "description":
					r.Description, _ = v.(string)
				case "actions":
					list, _ := v.([]any)
					for _, a := range list {
						if s, ok := a.(string); ok {
							r.Actions = append(r.Actions, s)
						}
					}
					slices.Sort(r.Actions)
				default:
					if r.Other == nil {
						r.Other = map[string]any{}
					}
					r.Other[k] = v
				}
			}
		}
		for _, a := range r.Actions {
			if act, ok := byName[a]; ok {
				act.Roles = append(act.Roles, name)
			}
		}
		c.Roles = append(c.Roles, r)
	}
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		c.Actions = append(c.Actions, *byName[name])
	}
	return c, nil
}

// CoverageReport is the outcome of Coverage.
type CoverageReport struct {
	PolicyVersion string `json:"policy_version"`
	// Gates has one entry per privileged action, sorted.
	Gates        []Gate   `json:"gates"`
	Gated        int      `json:"gated"`
	GatedPercent float64  `json:"gated_percent"`
	Ungated      []string `json:"ungated"`
	// Lines is the Rego line coverage of the policy modules (not the test
	// modules) by the scenarios and the bundle's Rego tests.
	Lines     LineCoverage `json:"lines"`
	Scenarios int          `json:"scenarios"`
	RegoTests int          `json:"rego_tests"`
}

// Gate says whether one privileged action is gated by the policy.
type Gate struct {
	Action    string `json:"action"`
	InCatalog bool   `json:"in_catalog"`
	// AnonymousDenied: a principal with no id, no roles and no entity is
	// denied. RolelessDenied: an existing principal without roles (MFA,
	// same region as the resource) is denied.
	AnonymousDenied bool `json:"anonymous_denied"`
	RolelessDenied  bool `json:"roleless_denied"`
	// ScenarioAllows and ScenarioDenies count the scenarios for the action
	// by the decision the bundle actually makes.
	ScenarioAllows int      `json:"scenario_allows"`
	ScenarioDenies int      `json:"scenario_denies"`
	Gated          bool     `json:"gated"`
	Problems       []string `json:"problems,omitempty"`
}

// LineCoverage is Rego line coverage, as OPA's cover package computes it:
// a line counts as covered when an expression or rule head on it was
// evaluated, and as not covered when one was not (a line can be both).
type LineCoverage struct {
	Percent    float64            `json:"percent"`
	Covered    int                `json:"covered_lines"`
	NotCovered int                `json:"not_covered_lines"`
	Files      []FileLineCoverage `json:"files"` // sorted by file
}

// FileLineCoverage is the line coverage of one policy file.
type FileLineCoverage struct {
	File       string      `json:"file"`
	Percent    float64     `json:"percent"`
	Covered    int         `json:"covered_lines"`
	NotCovered int         `json:"not_covered_lines"`
	CoveredAt  []LineRange `json:"covered"`
	MissedAt   []LineRange `json:"not_covered"`
}

// LineRange is an inclusive range of lines. Kinds, on a not-covered range,
// tells why OPA skipped it when it knows: "index_excluded" (the rule
// indexer ruled it out without evaluating it) or "early_exit".
type LineRange struct {
	Start int      `json:"start"`
	End   int      `json:"end"`
	Kinds []string `json:"kinds,omitempty"`
}

func (r LineRange) String() string {
	s := fmt.Sprint(r.Start)
	if r.End != r.Start {
		s += fmt.Sprintf("-%d", r.End)
	}
	if len(r.Kinds) > 0 {
		s += " (" + strings.Join(r.Kinds, ",") + ")"
	}
	return s
}

// Coverage checks that every action in privileged is gated by the bundle
// and measures Rego line coverage.
//
// An action is gated when it is in the bundle's action catalog, an
// anonymous and a roleless principal are both denied it, and the scenario
// matrix has at least one scenario the bundle allows and one it denies for
// it. Line coverage traces every scenario's evaluation and every Rego test
// of the bundle with OPA's cover tracer.
//
// The bundle must load (compile, and its own tests pass), otherwise the
// error wraps ErrInvalidBundle.
func Coverage(ctx context.Context, bundle fs.FS, privileged []string, scenarios []Scenario) (CoverageReport, error) {
	e, err := New(ctx, Config{Bundle: bundle, Timeout: ToolTimeout})
	if err != nil {
		return CoverageReport{}, err
	}
	b, err := loadBundle(bundle)
	if err != nil {
		return CoverageReport{}, fmt.Errorf("%w: %w", ErrInvalidBundle, err)
	}
	catalog, err := catalogFromData(b.data)
	if err != nil {
		return CoverageReport{}, err
	}
	rep := CoverageReport{PolicyVersion: e.Version(), Scenarios: len(scenarios), Ungated: []string{}}

	allows, denies := map[string]int{}, map[string]int{}
	for _, s := range scenarios {
		if e.Decide(ctx, s.Input).Allow {
			allows[s.Input.Action]++
		} else {
			denies[s.Input.Action]++
		}
	}
	actions := slices.Clone(privileged)
	slices.Sort(actions)
	for _, a := range slices.Compact(actions) {
		g := gate(ctx, e, catalog, a)
		g.ScenarioAllows, g.ScenarioDenies = allows[a], denies[a]
		if g.ScenarioAllows == 0 {
			g.Problems = append(g.Problems, "no scenario is allowed (add one to the scenario matrix)")
		}
		if g.ScenarioDenies == 0 {
			g.Problems = append(g.Problems, "no scenario is denied (add one to the scenario matrix)")
		}
		g.Gated = len(g.Problems) == 0
		if g.Gated {
			rep.Gated++
		} else {
			rep.Ungated = append(rep.Ungated, a)
		}
		rep.Gates = append(rep.Gates, g)
	}
	rep.GatedPercent = 100
	if len(rep.Gates) > 0 {
		rep.GatedPercent = 100 * float64(rep.Gated) / float64(len(rep.Gates))
	}

	rep.Lines, rep.RegoTests, err = lineCoverage(ctx, b, scenarios)
	if err != nil {
		return CoverageReport{}, err
	}
	return rep, nil
}

// gate probes the engine with principals that must never be allowed a
// privileged action.
func gate(ctx context.Context, e *Engine, c Catalog, action string) Gate {
	g := Gate{Action: action, InCatalog: c.Has(action)}
	if !g.InCatalog {
		g.Problems = append(g.Problems, "not in the policy's action catalog (data.companyos.actions)")
	}
	attrs := func() map[string]any { return map[string]any{"region": "eu"} }
	res := Resource{ID: "probe:resource", Kind: "probe", Attrs: attrs(), Exists: true}
	target := Resource{ID: "probe:target", Kind: "probe", Attrs: attrs(), Exists: true}
	probe := func(p Principal) Decision {
		return e.Decide(ctx, Input{Action: action, Tenant: DefaultScenarioTenant, Principal: p, Resource: res, Target: &target, Relation: "owns"})
	}
	if d := probe(Principal{}); !d.Allow {
		g.AnonymousDenied = true
	} else {
		g.Problems = append(g.Problems, "an anonymous principal is allowed: "+grantingRules(d))
	}
	roleless := Principal{ID: "user:probe", Kind: "user", Roles: []string{}, Attrs: attrs(), MFA: true, Exists: true}
	if d := probe(roleless); !d.Allow {
		g.RolelessDenied = true
	} else {
		g.Problems = append(g.Problems, "a principal without roles is allowed: "+grantingRules(d))
	}
	return g
}

func grantingRules(d Decision) string {
	var rules []string
	for _, r := range d.Rationale {
		if r.Result {
			rules = append(rules, r.Rule)
		}
	}
	return "granted by " + strings.Join(rules, ", ")
}

// lineCoverage traces the scenarios and the bundle's Rego tests.
func lineCoverage(ctx context.Context, b *loadedBundle, scenarios []Scenario) (LineCoverage, int, error) {
	compiler, err := compileBundle(b)
	if err != nil {
		return LineCoverage{}, 0, fmt.Errorf("%w: %w", ErrInvalidBundle, err)
	}
	store := newStore(b.data)
	cov := cover.New()
	noIndex, noEarlyExit := cover.New(), cover.New()
	cov.AddRun(cover.KindIndexExcluded, noIndex)
	cov.AddRun(cover.KindEarlyExit, noEarlyExit)

	pq, err := rego.New(
		rego.Query(DecisionQuery),
		rego.Compiler(compiler),
		rego.Store(store),
		rego.StrictBuiltinErrors(true),
	).PrepareForEval(ctx)
	if err != nil {
		return LineCoverage{}, 0, fmt.Errorf("%w: prepare %s: %w", ErrInvalidBundle, DecisionQuery, err)
	}
	for _, s := range scenarios {
		input, err := inputValue(&s.Input)
		if err != nil {
			return LineCoverage{}, 0, fmt.Errorf("policy: scenario %q: %w", s.Name, err)
		}
		for _, opts := range [][]rego.EvalOption{
			{rego.EvalQueryTracer(cov)},
			cover.NoIndexingEvalOptions(noIndex, nil),
			cover.NoEarlyExitEvalOptions(noEarlyExit, nil),
		} {
			// Errors are scenario results (fail closed), not coverage errors.
			_, _ = pq.Eval(ctx, append(opts, rego.EvalParsedInput(input))...)
		}
	}

	tests, err := traceBundleTests(ctx, b, store, cov)
	if err != nil {
		return LineCoverage{}, 0, err
	}

	// The report also has the test modules (the tracer saw them run); the
	// totals here count the policy modules only.
	report := cov.Report(b.modules)
	var lc LineCoverage
	for _, file := range slices.Sorted(maps.Keys(b.modules)) {
		fr := report.Files[file]
		fc := FileLineCoverage{File: file, CoveredAt: []LineRange{}, MissedAt: []LineRange{}}
		if fr != nil {
			fc.Percent, fc.Covered, fc.NotCovered = fr.Coverage, fr.CoveredLines, fr.NotCoveredLines
			fc.CoveredAt = lineRanges(fr.Covered)
			fc.MissedAt = lineRanges(fr.NotCovered)
		}
		lc.Covered += fc.Covered
		lc.NotCovered += fc.NotCovered
		lc.Files = append(lc.Files, fc)
	}
	if total := lc.Covered + lc.NotCovered; total > 0 {
		lc.Percent = 100 * float64(lc.Covered) / float64(total)
	}
	return lc, tests, nil
}

// traceBundleTests runs the bundle's Rego tests with cov as the coverage
// tracer, like `opa test --coverage`.
func traceBundleTests(ctx context.Context, b *loadedBundle, store storage.Store, cov *cover.Cover) (int, error) {
	if len(b.tests) == 0 {
		return 0, nil
	}
	all := make(map[string]*ast.Module, len(b.modules)+len(b.tests))
	for k, m := range b.modules {
		all[k] = m.Copy()
	}
	for k, m := range b.tests {
		all[k] = m.Copy()
	}
	ch, err := tester.NewRunner().
		SetCompiler(newCompiler()).
		SetStore(store).
		SetModules(all).
		CapturePrintOutput(true).
		RaiseBuiltinErrors(true).
		SetCoverageQueryTracer(cov).
		SetCoverageRuns([]cover.Kind{cover.KindIndexExcluded, cover.KindEarlyExit}).
		RunTests(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("%w: compile tests: %w", ErrInvalidBundle, err)
	}
	var n int
	var failures []string
	for r := range ch {
		n++
		if !r.Pass() && !r.Skip {
			failures = append(failures, describeFailure(r))
		}
	}
	if len(failures) > 0 {
		slices.Sort(failures)
		return n, fmt.Errorf("%w: policy tests failed under coverage:\n  %s", ErrInvalidBundle, strings.Join(failures, "\n  "))
	}
	return n, nil
}

// lineRanges merges OPA's column ranges into sorted, non-overlapping line
// ranges, keeping the union of their kinds.
func lineRanges(rs []cover.Range) []LineRange {
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b cover.Range) int { return a.Compare(b) })
	out := []LineRange{}
	for _, r := range sorted {
		var kinds []string
		for _, k := range r.Kinds {
			kinds = append(kinds, string(k))
		}
		if n := len(out); n > 0 && r.Start.Row <= out[n-1].End+1 {
			last := &out[n-1]
			last.End = max(last.End, r.End.Row)
			last.Kinds = append(last.Kinds, kinds...)
			slices.Sort(last.Kinds)
			last.Kinds = slices.Compact(last.Kinds)
			continue
		}
		slices.Sort(kinds)
		out = append(out, LineRange{Start: r.Start.Row, End: r.End.Row, Kinds: slices.Compact(kinds)})
	}
	return out
}

// Check returns an error naming every ungated action and, if the Rego line
// coverage is below minLinePercent, saying so; nil when both hold.
func (r CoverageReport) Check(minLinePercent float64) error {
	var errs []error
	if len(r.Ungated) > 0 {
		errs = append(errs, fmt.Errorf("privileged actions not gated (%.1f%%, want 100%%): %s",
			r.GatedPercent, strings.Join(r.Ungated, ", ")))
	}
	if r.Lines.Percent < minLinePercent {
		errs = append(errs, fmt.Errorf("Rego line coverage %.1f%% is below the minimum %.1f%%", r.Lines.Percent, minLinePercent))
	}
	return errors.Join(errs...)
}

// WriteText writes the report for people.
func (r CoverageReport) WriteText(w io.Writer, minLinePercent float64) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "policy %s: %d scenarios, %d Rego tests\n\n", r.PolicyVersion, r.Scenarios, r.RegoTests)
	fmt.Fprintf(&b, "privileged actions gated: %d of %d (%.1f%%)\n", r.Gated, len(r.Gates), r.GatedPercent)
	tw := tabwriter.NewWriter(&b, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "  action\tgated\tcatalog\tanonymous denied\troleless denied\tscenarios allow/deny")
	for _, g := range r.Gates {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%d/%d\n", g.Action, yesNo(g.Gated), yesNo(g.InCatalog),
			yesNo(g.AnonymousDenied), yesNo(g.RolelessDenied), g.ScenarioAllows, g.ScenarioDenies)
	}
	tw.Flush()
	for _, g := range r.Gates {
		for _, p := range g.Problems {
			fmt.Fprintf(&b, "  UNGATED %s: %s\n", g.Action, p)
		}
	}
	fmt.Fprintf(&b, "\nRego line coverage: %.1f%% (%d lines covered, %d not covered; minimum %.1f%%)\n",
		r.Lines.Percent, r.Lines.Covered, r.Lines.NotCovered, minLinePercent)
	for _, f := range r.Lines.Files {
		fmt.Fprintf(&b, "  %s: %.1f%% (%d covered, %d not covered)\n", f.File, f.Percent, f.Covered, f.NotCovered)
		if len(f.MissedAt) > 0 {
			parts := make([]string, len(f.MissedAt))
			for i, lr := range f.MissedAt {
				parts[i] = lr.String()
			}
			fmt.Fprintf(&b, "    not covered: %s\n", strings.Join(parts, ", "))
		}
	}
	if err := r.Check(minLinePercent); err != nil {
		fmt.Fprintf(&b, "\nFAIL: %s\n", strings.ReplaceAll(err.Error(), "\n", "\nFAIL: "))
	} else {
		b.WriteString("\nok\n")
	}
	_, err := w.Write(b.Bytes())
	return err
}

func yesNo(v bool) string {
	if v {
		return "yes"
	}
	return "NO"
}
