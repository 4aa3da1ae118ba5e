package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/companyos/companyos/commands"
	"github.com/companyos/companyos/policy"
	"github.com/companyos/companyos/schemas"
)

const policyUsage = `Usage: companyos policy <command> [flags]

Tools for the OPA policy bundle (default: the bundle embedded in this binary,
schemas/policy; --bundle=dir uses a bundle directory instead).

Commands:
  test      evaluate the scenario matrix (<bundle>/scenarios/*.yaml) and compare
            decisions, obligations and golden rationales; --update accepts goldens
  coverage  check that every privileged action is gated and measure Rego line coverage
  docs      render the bundle's documentation as a static HTML site (--out dir)
  simulate  replay logged commands against a candidate bundle (--bundle dir --since 7d)
            and report every decision that would change

Run "companyos policy <command> --help" for the flags of a command.
`

func runPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, policyUsage)
		return 2
	}
	switch args[0] {
	case "test":
		return runPolicyTest(ctx, args[1:], stdout, stderr)
	case "coverage":
		return runPolicyCoverage(ctx, args[1:], stdout, stderr)
	case "docs":
		return runPolicyDocs(ctx, args[1:], stdout, stderr)
	case "simulate":
		return runPolicySimulate(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, policyUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "companyos policy: unknown command %q\n\n%s", args[0], policyUsage)
		return 2
	}
}

// policySource is the bundle and scenario directory a policy tool works on.
type policySource struct {
	bundleDir    string // "" = embedded
	scenariosDir string // "" = <bundle>/scenarios
}

func (s *policySource) flags(fl *flag.FlagSet) {
	fl.StringVar(&s.bundleDir, "bundle", "", "policy bundle directory (default: the embedded bundle, schemas/policy)")
	fl.StringVar(&s.scenariosDir, "scenarios", "", "scenario matrix directory (default: <bundle>/scenarios)")
}

func (s *policySource) bundle() (fs.FS, error) {
	if s.bundleDir == "" {
		return fs.Sub(schemas.Policy, "policy")
	}
	if fi, err := os.Stat(s.bundleDir); err != nil {
		return nil, err
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("--bundle %s is not a directory", s.bundleDir)
	}
	return os.DirFS(s.bundleDir), nil
}

// scenarios returns the scenario directory; ok is false when the default
// directory does not exist (a bundle without a matrix).
func (s *policySource) scenarios(bundle fs.FS) (dir fs.FS, ok bool, err error) {
	if s.scenariosDir != "" {
		if _, err := os.Stat(s.scenariosDir); err != nil {
			return nil, false, err
		}
		return os.DirFS(s.scenariosDir), true, nil
	}
	if _, err := fs.Stat(bundle, "scenarios"); errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	dir, err = fs.Sub(bundle, "scenarios")
	return dir, err == nil, err
}

// writableScenarios is the on-disk scenario directory --update writes to.
func (s *policySource) writableScenarios() (string, error) {
	switch {
	case s.scenariosDir != "":
		return s.scenariosDir, nil
	case s.bundleDir != "":
		return filepath.Join(s.bundleDir, "scenarios"), nil
	default:
		return "", errors.New("--update writes golden files, so it needs a directory: pass --bundle (e.g. --bundle schemas/policy) or --scenarios")
	}
}

// parsePolicyFlags parses like parse and maps --help to exit 0.
func parsePolicyFlags(fl *flag.FlagSet, args []string, stderr io.Writer) (code int, done bool) {
	if err := parse(fl, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, true
		}
		fmt.Fprintf(stderr, "%s: %v\n", fl.Name(), err)
		return 2, true
	}
	return 0, false
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runPolicyTest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("companyos policy test", flag.ContinueOnError)
	fl.SetOutput(stderr)
	var src policySource
	src.flags(fl)
	update := fl.Bool("update", false, "rewrite <scenarios>/golden from the current decisions (and remove stale goldens); expectation failures still fail")
	asJSON := fl.Bool("json", false, "print the report as JSON")
	verbose := fl.Bool("v", false, "list passing scenarios too")
	fl.Usage = func() {
		fmt.Fprint(stderr, `Usage: companyos policy test [--bundle dir] [--scenarios dir] [--update] [--json]

Evaluates every scenario of the matrix with the bundle and compares the
decision and obligations with the scenario's expectation and the full
decision with golden/<name>.json. Exits 1 on any mismatch.
After an intended policy change:
  companyos policy test --bundle schemas/policy --update

Flags (each also COMPANYOS_<NAME>):
`)
		fl.PrintDefaults()
	}
	if code, done := parsePolicyFlags(fl, args, stderr); done {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "companyos policy test: %v\n", err)
		return 1
	}
	bundle, err := src.bundle()
	if err != nil {
		return fail(err)
	}
	scenDir, ok, err := src.scenarios(bundle)
	if err != nil {
		return fail(err)
	}
	if !ok {
		return fail(errors.New("the bundle has no scenarios directory; pass --scenarios"))
	}
	var updateDir string
	if *update {
		if updateDir, err = src.writableScenarios(); err != nil {
			fmt.Fprintf(stderr, "companyos policy test: %v\n", err)
			return 2
		}
		scenDir = os.DirFS(updateDir)
	}
	scenarios, err := policy.LoadScenarios(scenDir)
	if err != nil {
		return fail(err)
	}
	e, err := policy.New(ctx, policy.Config{Bundle: bundle, Timeout: policy.ToolTimeout})
	if err != nil {
		return fail(err)
	}
	if *update {
		written, removed, err := policy.WriteGoldens(updateDir, policy.RunScenarios(ctx, e, scenarios, nil))
		if err != nil {
			return fail(err)
		}
		if !*asJSON {
			for _, n := range written {
				fmt.Fprintf(stdout, "wrote   %s\n", filepath.Join(updateDir, policy.ScenarioGoldenDir, n))
			}
			for _, n := range removed {
				fmt.Fprintf(stdout, "removed %s\n", filepath.Join(updateDir, policy.ScenarioGoldenDir, n))
			}
		}
		scenDir = os.DirFS(updateDir)
	}
	golden, err := fs.Sub(scenDir, policy.ScenarioGoldenDir)
	if err != nil {
		return fail(err)
	}
	rep := policy.RunScenarios(ctx, e, scenarios, golden)
	if *asJSON {
		err = writeJSON(stdout, rep)
	} else {
		err = rep.WriteText(stdout, *verbose)
	}
	if err != nil {
		return fail(err)
	}
	if !rep.OK() {
		return 1
	}
	return 0
}

func runPolicyCoverage(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("companyos policy coverage", flag.ContinueOnError)
	fl.SetOutput(stderr)
	var src policySource
	src.flags(fl)
	var extra listFlag
	fl.Var(&extra, "privileged", "extra privileged actions to check, comma-separated (always checked: every command type and the bundle's data.companyos.privileged_actions)")
	minLines := fl.Float64("min-lines", 90, "minimum Rego line coverage, in percent")
	asJSON := fl.Bool("json", false, "print the report as JSON")
	fl.Usage = func() {
		fmt.Fprint(stderr, `Usage: companyos policy coverage [--bundle dir] [--json] [--min-lines 90]

Checks that every privileged action (each command type, each action of the
bundle's privileged_actions, and --privileged) is gated: in the action
catalog, denied to anonymous and roleless principals, and allowed and denied
by at least one scenario each. Then measures Rego line coverage of the
policy by the scenario matrix and the bundle's Rego tests. Exits 1 when an
action is not gated or coverage is below --min-lines.

Flags (each also COMPANYOS_<NAME>):
`)
		fl.PrintDefaults()
	}
	if code, done := parsePolicyFlags(fl, args, stderr); done {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "companyos policy coverage: %v\n", err)
		return 1
	}
	bundle, err := src.bundle()
	if err != nil {
		return fail(err)
	}
	var scenarios []policy.Scenario
	if dir, ok, err := src.scenarios(bundle); err != nil {
		return fail(err)
	} else if ok {
		if scenarios, err = policy.LoadScenarios(dir); err != nil {
			return fail(err)
		}
	}
	catalog, err := policy.ReadCatalog(bundle)
	if err != nil {
		return fail(err)
	}
	privileged := slices.Concat(commands.Types, catalog.Privileged(), extra)
	rep, err := policy.Coverage(ctx, bundle, privileged, scenarios)
	if err != nil {
		return fail(err)
	}
	if *asJSON {
		err = writeJSON(stdout, rep)
	} else {
		err = rep.WriteText(stdout, *minLines)
	}
	if err != nil {
		return fail(err)
	}
	if err := rep.Check(*minLines); err != nil {
		if *asJSON {
			fmt.Fprintf(stderr, "companyos policy coverage: %v\n", err)
		}
		return 1
	}
	return 0
}

func runPolicyDocs(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("companyos policy docs", flag.ContinueOnError)
	fl.SetOutput(stderr)
	var src policySource
	src.flags(fl)
	out := fl.String("out", "", "directory to write the site to (required; created if missing)")
	fl.Usage = func() {
		fmt.Fprint(stderr, `Usage: companyos policy docs [--bundle dir] --out site/

Renders the bundle's documentation as static HTML (no scripts, no external
assets): version and hash, one page per rule from its comments and METADATA
annotations, the action catalog and role grants, the attribute catalog
(attributes.yaml, when present), the scenario matrix and the Rego tests.
The output depends only on the bundle, so it can be committed or diffed.

Flags (each also COMPANYOS_<NAME>):
`)
		fl.PrintDefaults()
	}
	if code, done := parsePolicyFlags(fl, args, stderr); done {
		return code
	}
	if *out == "" {
		fmt.Fprintln(stderr, "companyos policy docs: --out is required")
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "companyos policy docs: %v\n", err)
		return 1
	}
	bundle, err := src.bundle()
	if err != nil {
		return fail(err)
	}
	cfg := policy.DocsConfig{Bundle: bundle}
	if dir, ok, err := src.scenarios(bundle); err != nil {
		return fail(err)
	} else if ok {
		if cfg.Scenarios, err = policy.LoadScenarios(dir); err != nil {
			return fail(err)
		}
	}
	files, err := policy.RenderDocs(ctx, cfg)
	if err != nil {
		return fail(err)
	}
	if err := policy.WriteDocs(*out, files); err != nil {
		return fail(err)
	}
	fmt.Fprintf(stdout, "wrote %d pages to %s\n", len(files), *out)
	return 0
}
